"""What Celery and kombu write to Redis, and the retention rules for it: pure, no I/O."""
