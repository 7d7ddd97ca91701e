"""The model-provider layer: one interface, one adapter per provider, no Dagster imports."""
