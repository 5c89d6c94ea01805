"""Validate a flow's parameters before the flow starts (see cku_core.preflight for the checks).

`cku run` / `cku sweep` call `preflight_flow` before creating a flow run, so bad input costs about a
second, prints one line and writes nothing; the flows call `cku_core.preflight.preflight_run`
themselves too, so UI and deployment runs fail before their first stage.
"""

from __future__ import annotations

import inspect
from typing import Any

from cku_core.preflight import preflight_run

# Flow parameters that preflight_run understands (every flow passes the subset it has).
_CHECKED = ("model", "data", "scoring", "mask", "unlearn", "method", "methods", "method_overrides", "band", "bands",
            "checkpoint")


def preflight_flow(flow: Any, params: dict[str, Any]) -> None:
    """Run the preflight on a Prefect flow's parameters (defaults filled in, pydantic models built)."""
    validated = flow.validate_parameters(params)
    bound = inspect.signature(flow.fn).bind_partial(**validated)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k in _CHECKED}
    if "scale_out" in bound.arguments:  # cku sweep: the runner is installed and its cluster answers
        from flows._fanout import check_scale_out

        check_scale_out(bound.arguments["scale_out"])
    if "model" not in args:
        return  # not a flow that loads a model
    preflight_run(**args)
