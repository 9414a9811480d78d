"""``celery-janitor run``: the daemon, its jobs, metrics, health and HTTP endpoints."""
