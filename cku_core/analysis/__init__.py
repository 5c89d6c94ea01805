"""Analyses over recorded runs (pure functions and DuckDB queries; no Prefect, no torch)."""
