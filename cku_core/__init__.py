"""cku_core: Constrained Knowledge Unlearning as a plain library (no Prefect in here).

The pipeline in `tasks/` and `flows/` wraps these functions; everything here can be used from a
notebook or another orchestrator just as well.
"""

from cku_core.version import CODE_VERSION, __version__

__all__ = ["CODE_VERSION", "__version__"]
