"""Sweeps: each one scans, classifies and acts on one family of keys."""
