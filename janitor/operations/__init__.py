"""The janitor's work on Redis, shared by the one-shot verbs and the daemon's jobs."""
