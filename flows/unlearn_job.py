"""`cku-unlearn`: the unlearning stage alone, as the flow a GPU worker runs for a hand-off.

    [cpu pool] cku-pipeline ─ ... ─► unlearn-handoff ══ run_deployment ══► [gpu pool] cku-unlearn ─► unlearn
                                          ◄══ checkpoint key, read back from the shared artifact store ══╝

A pipeline with `options.unlearn_deployment = "cku-unlearn/cku-unlearn"` (tasks/handoff.py) starts
one run of this flow per unlearning stage. Its parameters are the stage's inputs as artifact
references (what `unlearn_stage` takes), never tensors: model, examples and mask are read from the
artifact store that every worker shares (CKU_ARTIFACT_ROOT), and the checkpoint is published there.
One gpu worker per device, each started with `--limit 1` and its own CUDA_VISIBLE_DEVICES, gives one
job per device (docs/cluster.md).
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger

from cku_core.config import UnlearnConfig
from cku_core.device import resolve_device
from cku_core.store import ArtifactMissingError, ArtifactStore, StoreError
from tasks.unlearn import unlearn_stage


@flow(name="cku-unlearn")
def cku_unlearn(
    model: dict[str, Any],
    examples: dict[str, Any],
    config: UnlearnConfig = UnlearnConfig(),
    mask: dict[str, Any] | None = None,
    band: list[int] | None = None,
    max_seconds: float | None = None,
    checkpoint_every: int | None = 10,
) -> dict[str, Any]:
    """Unlearn from artifact references (stage outputs of the calling pipeline); returns the checkpoint's stage output.

    `model`, `examples`, `mask`: the model / examples / mask stage outputs (their `ref` names the artifact).
    `config`: the unlearning config; `band`: trained layers; `max_seconds`, `checkpoint_every`: as in RunOptions.
    """
    log = get_run_logger()
    log.info("unlearning on %s (CUDA_VISIBLE_DEVICES=%s, pid %d)", resolve_device(config.device),
             os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), os.getpid())
    check_inputs([model, examples] + ([mask] if mask else []))
    return unlearn_stage(model, examples, config, mask, band, max_seconds, checkpoint_every=checkpoint_every)


def check_inputs(stage_outputs: list[dict[str, Any]]) -> None:
    """Every input artifact is in this worker's store and intact, before a model is loaded."""
    store = ArtifactStore()
    for out in stage_outputs:
        try:
            store.open_ref(out["ref"])
        except ArtifactMissingError as exc:  # the caller wrote it: this worker looks at another store
            raise StoreError(f"{exc}; if the calling flow wrote it, this worker does not share its artifact store: "
                             "start the worker with the same CKU_ARTIFACT_ROOT") from None
