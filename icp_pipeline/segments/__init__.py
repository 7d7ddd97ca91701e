"""ICP segments domain logic: plain functions, no Dagster imports."""
