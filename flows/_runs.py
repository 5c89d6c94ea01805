"""Bookkeeping shared by the flows: call a stage and note what it cost, open and close a run record."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect.runtime import flow_run

from tasks.record import now, record_run, run_row


@dataclass
class RunLog:
    """What a flow run did, stage by stage, for the `stages` table and the run's timings."""

    run_id: str
    name: str
    flow: str
    method: str | None
    config: dict[str, Any]
    parent_run_id: str | None
    started_at: Any = field(default_factory=now)
    stages: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    model_digest: str | None = None
    data_digest: str | None = None

    def stage(self, task: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run one stage task in this flow (directly: long stages must not sit in a worker thread)."""
        start = time.perf_counter()
        state = task(*args, return_state=True, **kwargs)
        out = state.result()  # re-raises the task's exception, failing the flow
        seconds = time.perf_counter() - start
        prefect_cached = state.name == "Cached"
        cached = prefect_cached or bool(out.get("reused"))
        self.stages.append({"stage": out["stage"], "stage_version": out["version"], "key": out["key"],
                            "cached": cached, "prefect_state": state.name, "seconds": round(seconds, 3),
                            "artifact_path": out["ref"]["path"]})
        self.timings[out["stage"]] = round(self.timings.get(out["stage"], 0.0) + seconds, 3)
        return out

    def row(self, status: str, finished: bool) -> dict[str, Any]:
        return run_row(flow=self.flow, name=self.name, method=self.method, config=self.config, status=status,
                       started_at=self.started_at, finished_at=now() if finished else None,
                       model_digest=self.model_digest, data_digest=self.data_digest, timings=self.timings,
                       parent_run_id=self.parent_run_id)


def open_run(method: str | None, config: dict[str, Any]) -> RunLog:
    """Start the run's record (status running) under the Prefect flow run id and name."""
    log = RunLog(run_id=str(flow_run.id), name=str(flow_run.name), flow=str(flow_run.flow_name), method=method,
                 config=config, parent_run_id=str(flow_run.parent_flow_run_id) if flow_run.parent_flow_run_id else None)
    record_run(log.run_id, "start", log.row("running", finished=False))
    return log


def close_run(log: RunLog, children: list[str] | None = None) -> None:
    """Mark the run completed. A parent run (sweep, comparison) trains nothing itself: it takes the
    model and data digests of its child runs when they all agree, so its row has provenance too."""
    if children:
        inherit_digests(log, children)
    record_run(log.run_id, "finish", log.row("completed", finished=True))


def inherit_digests(log: RunLog, children: list[str]) -> None:
    from cku_core.results import ResultsStore

    _, rows = ResultsStore().query(
        f"SELECT DISTINCT model_digest, data_digest FROM runs WHERE run_id IN ({', '.join('?' * len(children))})",
        list(children))
    if len(rows) == 1:  # children that started from different models leave the parent's digests empty
        log.model_digest = log.model_digest or rows[0][0]
        log.data_digest = log.data_digest or rows[0][1]


def record_failure(flow: Any, run: Any, state: Any) -> None:
    """Flow hook (on_failure / on_crashed): mark the run failed in the results store.

    It writes the results store directly instead of through a task: hooks run after the flow's
    task context is gone, and a failed run must still be visible to `cku runs`.
    """
    from cku_core.results import ResultsStore

    # Only what is new: the `runs` view fills the other columns from the run's earlier rows.
    row = {"flow": flow.name, "name": run.name, "status": state.type.value.lower(), "finished_at": now(),
           "started_at": run.start_time}
    ResultsStore().write_rows("runs", str(run.id), "failed", [row])


def publish_comparison(run_id: str, method_run_ids: list[str], judge: str = "refusal_keyword",
                       labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The methods (or sweep points, named by `labels`) side by side: a table artifact and a markdown
    report with the ASR-vs-utility plot in the Prefect UI (the PNG also goes to the artifact root's
    `reports/` folder), and the rows returned for the terminal."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from cku_core.results import comparison_markdown, comparison_plot, comparison_rows

    from cku_core.store import ArtifactStore

    rows = comparison_rows(method_run_ids, judge=judge, labels=labels)
    rounded = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    create_table_artifact(rounded, key="cku-comparison", description=f"Methods compared (ASR by the {judge} judge)")
    png = comparison_plot(rows, ArtifactStore().root / "reports" / f"{run_id}-asr_vs_utility.png")
    markdown = comparison_markdown(rounded, judge=judge, plot_png=png.read_bytes() if png else None)
    if png:
        markdown += f"\n\nPlot file: `{png}`"
    create_markdown_artifact(markdown, key="cku-report", description=f"Comparison report of run {run_id}")
    return rounded
