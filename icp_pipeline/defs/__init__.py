"""Dagster wiring, one folder per domain. The logic lives in plain modules these assets call."""
