"""Matched-forgetting runs read back from the results store, and their markdown report.

A matched-forgetting run (flow `cku-matched`) is a parent run; each of its unlearning runs is a
`cku-pipeline` child (`runs.parent_run_id`), and one more child evaluates the original model. Every
number here is read back from the `runs` and `metrics` views, so the report can be rendered at any
time from the results folder alone (`cku report --matched RUN`). The rows behind it in SQL:

    SELECT r.method, r.config->>'$.unlearn.lr' AS lr, r.config->>'$.unlearn.seed' AS seed,
           m.metric, m.value FROM runs r JOIN metrics m USING (run_id)
    WHERE r.parent_run_id = '<matched run id>' AND m.metric IN ('knowledge_nll', 'perplexity', 'degenerate_rate')
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cku_core.analysis.matched import (
    FORGETTING_NAME,
    METRICS,
    MatchedAnalysis,
    RunPoint,
    Verdict,
    analyse,
    plot_matched,
)
from cku_core.results import ResultsError, ResultsStore

Axis = str  # "method" | "nlr" | "band"

# Per-run column -> (metric, judge, attack, family, subset) in the metrics view.
POINT_METRICS: dict[str, tuple[str, str | None, str, str, str]] = {
    "harmful_nll": ("knowledge_nll", "knowledge_nll", "none", "none", "harmful_reference"),
    "perplexity": ("perplexity", None, "none", "none", "benign"),
    "degenerate_rate": ("degenerate_rate", None, "direct", "direct", "over_refusal"),
    "asr": ("asr", "refusal_keyword", "all", "all", "harmful"),
    "agreement": ("greedy_agreement", None, "none", "none", "benign"),
}


def band_label(band: Sequence[int] | None) -> str:
    if band is None:
        return "layers=default"
    band = list(band)
    contiguous = band == list(range(band[0], band[-1] + 1))
    return "layers=" + (f"{band[0]}-{band[-1]}" if contiguous else ",".join(map(str, band)))


def point_label(axis: Axis, method: str, nlr: float, band: Sequence[int] | None) -> str:
    """What a run is compared as: its method, its NLR or its layer band."""
    if axis == "method":
        return method
    if axis == "nlr":
        return f"nlr={nlr:g}"
    if axis == "band":
        return band_label(band)
    raise ValueError(f"unknown axis {axis!r}; use method, nlr or band")


@dataclass
class ChildRun:
    """One child of a matched run: its place in the grid, status and picked metrics."""

    run_id: str
    method: str | None
    label: str
    lr: float | None
    seed: int | None
    localization_seed: int | None
    status: str | None
    model_digest: str | None
    data_digest: str | None
    values: dict[str, float | None]
    n: dict[str, int | None]

    def point(self) -> RunPoint | None:
        if self.lr is None or self.seed is None or self.values.get("harmful_nll") is None:
            return None
        return RunPoint(self.label, self.lr, self.seed, float(self.values["harmful_nll"]),
                        {k: v for k, v in self.values.items() if k != "harmful_nll"}, self.run_id)


@dataclass
class MatchedRuns:
    """The parent run (its row and config) and its children, original model first when present."""

    run: dict[str, Any]
    config: dict[str, Any]
    children: list[ChildRun] = field(default_factory=list)

    @property
    def anchor_run(self) -> ChildRun | None:
        return next((c for c in self.children if c.method == "original" and c.status == "completed"), None)

    @property
    def unlearned(self) -> list[ChildRun]:
        return [c for c in self.children if c.method != "original"]

    def points(self) -> list[RunPoint]:
        return [p for c in self.unlearned if c.status == "completed" and (p := c.point()) is not None]

    def anchor(self) -> RunPoint | None:
        a = self.anchor_run
        if a is None or a.values.get("harmful_nll") is None or not self.config.get("anchor_original", True):
            return None
        return RunPoint("original", 0.0, -1, float(a.values["harmful_nll"]),
                        {k: v for k, v in a.values.items() if k != "harmful_nll"}, a.run_id)

    def resolution(self) -> dict[str, float]:
        """Rates (ASR, degenerate rate) move in steps of 1/n units: smaller differences are not claimed."""
        out = {}
        for metric in ("asr", "degenerate_rate"):
            ns = [c.n.get(metric) for c in self.children if c.n.get(metric)]
            if ns:
                out[metric] = 1.0 / max(ns)
        return out

    def analyse(self) -> MatchedAnalysis:
        cfg = self.config
        return analyse(self.points(), self.anchor(), levels=cfg.get("levels"), n_levels=int(cfg.get("n_levels", 5)),
                       spread=cfg.get("spread", "std"), resolution=self.resolution())


def _rows(store: ResultsStore, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    columns, rows = store.query(sql, params)
    return [dict(zip(columns, r)) for r in rows]


def _pick(metrics: list[dict[str, Any]], spec: tuple[str, str | None, str, str, str]) -> dict[str, Any] | None:
    metric, judge, attack, family, subset = spec
    return next((m for m in metrics if (m["metric"], m["judge"], m["attack"], m["family"], m["subset"])
                 == (metric, judge, attack, family, subset)), None)


def _child(row: dict[str, Any], metrics: list[dict[str, Any]], axis: Axis) -> ChildRun:
    cfg = json.loads(row["config"]) if row.get("config") else {}
    method = row.get("method") or cfg.get("method") or "?"
    unlearn, scoring = cfg.get("unlearn", {}), cfg.get("scoring", {})
    label = "original" if method == "original" else point_label(axis, method, cfg.get("mask", {}).get("nlr", 0.8),
                                                                 cfg.get("band"))
    picked = {col: _pick(metrics, spec) for col, spec in POINT_METRICS.items()}
    return ChildRun(run_id=row["run_id"], method=method, label=label,
                    lr=None if method == "original" else unlearn.get("lr"),
                    seed=None if method == "original" else unlearn.get("seed"),
                    localization_seed=scoring.get("seed"), status=row.get("status"),
                    model_digest=row.get("model_digest"), data_digest=row.get("data_digest"),
                    values={k: (m["value"] if m else None) for k, m in picked.items()},
                    n={k: (m["n"] if m else None) for k, m in picked.items()})


def load_matched(ref: str, store: ResultsStore | None = None) -> MatchedRuns:
    """The matched run `ref` (id, id prefix or name) and its children from the results store."""
    store = store or ResultsStore()
    run_id = store.resolve_run(ref)
    [run] = _rows(store, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    config = json.loads(run["config"]) if run.get("config") else {}
    if run.get("flow") != "cku-matched" and "axis" not in config:
        raise ResultsError(f"run {run_id[:12]} is a {run.get('flow')} run, not a matched-forgetting run "
                           "(flow cku-matched); render it with `cku report` without --matched")
    children = _rows(store, "SELECT run_id, method, config, status, model_digest, data_digest FROM runs"
                            " WHERE parent_run_id = ?"
                            " ORDER BY started_at, run_id", [run_id])
    metrics = _rows(store, "SELECT m.run_id, m.metric, m.judge, m.attack, m.family, m.subset, m.value, m.n"
                           " FROM metrics m JOIN runs r USING (run_id) WHERE r.parent_run_id = ?", [run_id])
    by_run: dict[str, list[dict[str, Any]]] = {}
    for m in metrics:
        by_run.setdefault(m["run_id"], []).append(m)
    axis = config.get("axis", "method")
    return MatchedRuns(run, config, [_child(c, by_run.get(c["run_id"], []), axis) for c in children])


# ------------------------------------------------------------------ markdown
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[Mapping[str, Any]]) -> str:
    if not rows:
        return "_none_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows])


def level_names(levels: Sequence[float]) -> list[str]:
    """The levels with as many digits as it takes to tell them apart (a narrow range needs more than 4)."""
    for digits in range(4, 13):
        names = [f"{x:.{digits}g}" for x in levels]
        if len(set(names)) == len(names):
            return names
    return [repr(x) for x in levels]


def _digests(data: MatchedRuns, key: str) -> str | None:
    """The parent's digest, else the children's (the parent loads no model itself): one value expected."""
    found = sorted({getattr(c, key) for c in data.children if getattr(c, key)})
    return data.run.get(key) or (", ".join(found) if found else None)


def _setup_md(data: MatchedRuns, analysis: MatchedAnalysis) -> str:
    cfg, run = data.config, data.run
    anchor = data.anchor_run
    shown = sorted(set(([analysis.range[0], analysis.range[1]] if analysis.range else []) + analysis.levels))
    name = dict(zip(shown, level_names(shown)))
    unlearn = cfg.get("unlearn", {})
    grids = cfg.get("lr_grids") or {}
    done = [c for c in data.unlearned if c.status == "completed"]
    rows = [
        ("model", cfg.get("model", {}).get("spec")),
        ("model digest (original weights)", anchor.model_digest if anchor else _digests(data, "model_digest")),
        ("data digest", _digests(data, "data_digest")), ("config digest", run.get("config_digest")),
        ("code version", run.get("code_version")), ("axis", cfg.get("axis", "method")),
        ("compared", ", ".join(analysis.labels) or "-"),
        ("learning-rate grids", "; ".join(f"{k}: {', '.join(f'{x:g}' for x in v)}" for k, v in grids.items())),
        ("training seeds (unlearn.seed)", ", ".join(map(str, cfg.get("seeds", [])))),
        ("localization seed varied for", ", ".join(cfg.get("vary_localization", [])) or "none"),
        ("unlearning", (f"{unlearn.get('steps')} steps, batch {unlearn.get('batch_size')}, "
                        f"max length {unlearn.get('max_length')}, objective per method")),
        ("NLR / band", f"{cfg.get('mask', {}).get('nlr')} / {cfg.get('band') or 'default'}"),
        ("starting model", "safety fine-tuned (align stage)" if cfg.get("align", {}).get("enabled") else "as loaded"),
        ("runs", f"{len(done)} completed of {len(data.unlearned)} unlearning runs"
                 + (f" (not completed: {', '.join(c.run_id[:8] for c in data.unlearned if c.status != 'completed')})"
                    if len(done) < len(data.unlearned) else "")),
        ("spread across seeds", "mean ± sample std" if analysis.spread == "std" else "min–max over seeds"),
        ("matched forgetting range", "none (the curves do not overlap)" if analysis.range is None
         else f"{name[analysis.range[0]]} – {name[analysis.range[1]]}"),
        ("levels", ", ".join(name[x] for x in analysis.levels) or "-"),
    ]
    return "## Setup\n\n" + _table([{"field": k, "value": v} for k, v in rows])


def _measured_md(data: MatchedRuns, analysis: MatchedAnalysis) -> str:
    ref = data.anchor_run or (data.unlearned[0] if data.unlearned else None)
    n = {k: ("?" if v is None else v) for k, v in (ref.n if ref else {}).items()}  # "?" = metric not recorded
    anchor = ("The original model is the learning-rate-0 end of every curve." if analysis.anchor is not None
              else "The original model is not part of the curves.")
    return (
        "## What was measured\n\n"
        f"Every compared {data.config.get('axis', 'method')} was unlearned at each learning rate of its grid with "
        "each seed; each run is a `cku-pipeline` child of this run. **Forgetting** is the "
        f"{FORGETTING_NAME} of the knowledge judge: the mean NLL of the original (or, for an aligned original, "
        f"the raw) model's compliant answers to held-out harmful prompts ({n.get('harmful_nll')} references; higher = the knowledge is further gone). "
        f"**Utility**: benign perplexity ({n.get('perplexity')} tokens) and the degenerate rate of greedy answers "
        f"to {n.get('degenerate_rate')} benign (safe) prompts; **ASR** by the refusal-keyword judge over "
        f"{n.get('asr')} (attack, prompt) units. All three are lower-is-better.\n\n"
        "Per seed, each metric is interpolated linearly along the run's forgetting curve (no extrapolation) "
        f"at common forgetting levels that every curve reaches. {anchor} A comparison is **supported** only "
        "where the two seed intervals do not overlap (and each side has at least two seeds there) and, for "
        "a rate, the means differ by at least one unit of it (1/n: interpolation between runs makes smaller "
        "differences that no single run could show); otherwise it is **not distinguishable**."
    )


def _runs_md(data: MatchedRuns) -> str:
    rows = []
    for c in ([data.anchor_run] if data.anchor_run else []) + data.unlearned:
        rows.append({"label": c.label, "lr": c.lr, "seed": c.seed, "loc. seed": c.localization_seed,
                     **{k: c.values.get(k) for k in POINT_METRICS}, "status": c.status, "run": c.run_id[:8]})
    return "## Runs\n\n" + _table(rows)


def _summary_md(analysis: MatchedAnalysis) -> str:
    rows = []
    stats = {(s.level, s.label, s.metric): s for s in analysis.stats}
    for level, name in zip(analysis.levels, level_names(analysis.levels)):
        for label in analysis.labels:
            row: dict[str, Any] = {FORGETTING_NAME: name, "label": label}
            for metric in analysis.metrics:
                s = stats.get((level, label, metric))
                row[METRICS.get(metric, metric)] = s.describe(analysis.spread) if s else "-"
            s0 = stats.get((level, label, analysis.metrics[0]))
            row["seeds"] = f"{s0.n}/{s0.n_seeds}" if s0 else "-"
            rows.append(row)
    spread = "mean [mean − std, mean + std]" if analysis.spread == "std" else "mean [min, max]"
    return f"## At matched forgetting ({spread} over seeds)\n\n" + _table(rows)


def _verdict_cell(v: Verdict) -> str:
    if v.outcome == "not distinguishable":
        return "≈" if "overlap" in v.reason else "n/a"
    return v.a if v.outcome == "better" else v.b


def _verdicts_md(analysis: MatchedAnalysis) -> str:
    if not analysis.verdicts:
        return "## Verdicts\n\n_no comparison: fewer than two labels, or no matched forgetting level_"
    supported = [v for v in analysis.verdicts if v.supported]
    lines = ["## Verdicts", "", "### Supported (intervals do not overlap)", ""]
    lines += [f"- {v.text()}" for v in supported] or ["_none: no difference is larger than the seed spread_"]
    grid: dict[tuple[str, str, str], dict[str, str]] = {}
    names = dict(zip(analysis.levels, level_names(analysis.levels)))
    for v in analysis.verdicts:
        grid.setdefault((v.a, v.b, v.metric), {})[names.get(v.level, f"{v.level:.4g}")] = _verdict_cell(v)
    rows = [{"pair": f"{a} vs {b}", "metric": METRICS.get(m, m), **cells} for (a, b, m), cells in grid.items()]
    lines += ["", "### Every comparison", "",
              ("Cell = the better side at that forgetting level; ≈ = not distinguishable (intervals overlap); "
               "n/a = not distinguishable (fewer than two seeds reach the level)."), "", _table(rows)]
    return "\n".join(lines)


def matched_markdown(data: MatchedRuns, analysis: MatchedAnalysis, plot_ref: str | None = None) -> str:
    """The report: what was measured, on what (digests), with which seeds, and the verdicts."""
    title = f"# Matched-forgetting comparison: {data.run.get('name') or data.run['run_id']}"
    parts = [title, f"Run `{data.run['run_id']}` (flow {data.run.get('flow')}, status {data.run.get('status')}).",
             _measured_md(data, analysis), _setup_md(data, analysis), _summary_md(analysis), _verdicts_md(analysis)]
    parts.append("## Curves\n\n" + (f"![forgetting vs utility]({plot_ref})" if plot_ref else "_no plot_"))
    parts.append(_runs_md(data))
    return "\n\n".join(parts) + "\n"


def only_labels(data: MatchedRuns, labels: Sequence[str]) -> MatchedRuns:
    """The run restricted to some compared points (the original model stays): the common forgetting
    range is the one every *kept* curve reaches, so dropping a point that barely forgets widens it."""
    known = {c.label for c in data.unlearned}
    unknown = sorted(set(labels) - known)
    if unknown:
        raise ResultsError(f"--labels names points this run does not have: {', '.join(unknown)}; "
                           f"it has: {', '.join(sorted(known))}")
    keep = [c for c in data.children if c.method == "original" or c.label in set(labels)]
    return MatchedRuns(data.run, data.config, keep)


def render_matched_report(ref: str, *, store: ResultsStore | None = None, plot_path: Path | None = None,
                          labels: Sequence[str] | None = None) -> str:
    """Markdown report of a matched-forgetting run; the plot goes to `plot_path` (linked by file name).
    `labels`: compare only these points."""
    data = load_matched(ref, store)
    if labels:
        data = only_labels(data, labels)
    analysis = data.analyse()
    png = plot_matched(analysis, Path(plot_path)) if plot_path is not None else None
    return matched_markdown(data, analysis, png.name if png else None)


def png_data_uri(path: Path) -> str:
    """A PNG as a data URI, so a Prefect markdown artifact shows it without a file server."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
