"""Progress of long stages: a tqdm bar in the terminal and a progress artifact in the Prefect UI."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from tqdm.auto import tqdm

# Artifact updates are API calls: at most one per this many seconds (plus the last one).
UPDATE_EVERY_S = 2.0


class StageProgress:
    """`progress = StageProgress("unlearn", total)`, then `progress(done, total)` and `progress.close()`."""

    def __init__(self, stage: str, total: int, unit: str = "it", description: str | None = None) -> None:
        self.stage = stage
        self.bar = tqdm(total=total, desc=stage, unit=unit, dynamic_ncols=True, leave=False)
        self.artifact_id: Any = None
        self.last_update = 0.0
        try:
            self.artifact_id = create_progress_artifact(progress=0.0, description=description or f"{stage} progress")
        except Exception as exc:  # noqa: BLE001 - progress must never fail a stage
            get_run_logger().debug("no progress artifact for %s: %s", stage, exc)

    def __call__(self, done: int, total: int | None = None, postfix: dict[str, Any] | None = None) -> None:
        if total is not None and total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        now = time.monotonic()
        finished = self.bar.total is not None and done >= self.bar.total
        if self.artifact_id is not None and (finished or now - self.last_update >= UPDATE_EVERY_S):
            self.last_update = now
            try:
                update_progress_artifact(self.artifact_id, progress=100.0 * done / max(self.bar.total or 1, 1))
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
