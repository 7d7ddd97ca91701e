"""The embedded Dagster instance a newcomer's first run uses (SQLite under .icp/dagster_home)."""
