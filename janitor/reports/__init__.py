"""What the janitor concludes from what it saw: findings, the diagnose report, text for people."""
