"""icp-pipeline: AI visibility and ICP segments on Dagster."""

__version__ = "0.1.0"
