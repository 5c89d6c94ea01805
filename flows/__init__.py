"""Prefect flows of cku: each reads like the DAG it runs; the work lives in tasks/ and cku_core."""
