"""celery-janitor: keeps a Celery Redis clean without Celery beat."""

__version__ = "0.1.0"
