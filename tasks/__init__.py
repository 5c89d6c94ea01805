"""Prefect task wrappers, one per pipeline stage. The work itself lives in cku_core."""
