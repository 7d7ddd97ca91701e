"""ProcessOrg domain logic: plain functions, no Dagster imports."""
