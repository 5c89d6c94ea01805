"""Results store: append-only Parquet parts queried through DuckDB views.

Why Parquet parts and not one DuckDB file: DuckDB lets one process hold a database file for
writing, and while it does even read-only opens from other processes fail. Several flow runs write
results at once, so each run + stage writes its own immutable part

    <results_root>/<table>/run_id=<run_id>/part-<stage>-<uuid>.parquet

(written to a hidden temporary name, then atomically renamed, so readers never see half a file),
and every SQL query goes through an in-memory DuckDB connection whose views read all parts with
`read_parquet(..., hive_partitioning=true, union_by_name=true)`. Nothing is ever locked, and a
crashed writer leaves at most a hidden temporary file that no view reads.

The root may be an object-store URL (`CKU_RESULTS_ROOT=s3://bucket/prefix`): a part is then written
to a local temporary file and uploaded with one PUT (an object appears whole or not at all, the same
guarantee the rename gives locally), and the views read the parts in place through DuckDB's fsspec
integration (`register_filesystem`; the httpfs extension would need a download). Writers on any
number of hosts never touch each other's objects, so no row is lost.

`run_id` comes from the folder name (hive partitioning), never from the file, so a part cannot
disagree with its folder. Every row also gets `recorded_at`; the `runs` view shows one row per run
with each column's latest non-null value (a run writes a row when it starts and one when it ends or
fails), `runs_history` every row.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cku_core.errors import CKUError
from cku_core.remote import RemoteRoot, RemoteStorageError, is_remote
from cku_core.version import CODE_VERSION

ROOT_ENV = "CKU_RESULTS_ROOT"
DEFAULT_ROOT = Path("results")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ResultsError(CKUError):
    """A results write or query that cannot be done (bad table, bad row, write statement...)."""


@dataclass(frozen=True)
class Column:
    """One column of a results table: its Arrow type, how Python values are converted, its meaning."""

    name: str
    kind: str  # str | float | int | bool | json | ts
    doc: str


_ARROW = {"str": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(),
          "json": pa.string(), "ts": pa.timestamp("us", tz="UTC")}
_SQL = {"str": "VARCHAR", "float": "DOUBLE", "int": "BIGINT", "bool": "BOOLEAN", "json": "VARCHAR",
        "ts": "TIMESTAMPTZ"}

_PROVENANCE = (
    Column("model_digest", "str", "Fingerprint (sha256 of weights) of the model the numbers come from."),
    Column("data_digest", "str", "Digest of the evaluation/training data the numbers come from."),
    Column("config_digest", "str", "Digest of the run's canonical JSON config."),
    Column("code_version", "str", "cku version + git commit that produced the row (filled in when absent)."),
)

TABLES: dict[str, tuple[Column, ...]] = {
    "runs": (
        Column("flow", "str", "Prefect flow name (cku-pipeline, cku-sweep, ...)."),
        Column("name", "str", "Human-readable run name (the Prefect flow run name)."),
        Column("method", "str", "Unlearning method (cku, ga, graddiff, npo, original, ...)."),
        Column("config", "json", "The full run config as canonical JSON."),
        *_PROVENANCE,
        Column("package_versions", "json", "Versions of torch, transformers, prefect, duckdb, ..."),
        Column("started_at", "ts", "When the run started (UTC)."),
        Column("finished_at", "ts", "When the run finished (UTC); null while running."),
        Column("status", "str", "running | completed | failed | cancelled."),
        Column("timings", "json", "Seconds per stage."),
        Column("parent_run_id", "str", "The sweep/baseline run that launched this one, if any."),
    ),
    "stages": (
        Column("stage", "str", "Stage name (model, data, scoring, mask, unlearn, generate, judge, utility)."),
        Column("stage_version", "str", "Version of the stage's code that produced the artifact."),
        Column("key", "str", "Content-addressed cache key of the stage."),
        Column("cached", "bool", "True when the result was reused instead of recomputed."),
        Column("prefect_state", "str", "The task's final Prefect state name (Cached on a Prefect cache hit)."),
        Column("seconds", "float", "Wall-clock seconds the stage took in this run."),
        Column("artifact_path", "str", "Folder of the artifact the stage produced or reused."),
    ),
    "metrics": (
        Column("method", "str", "Method whose model was evaluated."),
        Column("metric", "str", "Metric name, e.g. asr, harmful_nll, perplexity, mc_accuracy, over_refusal."),
        Column("value", "float", "The metric's value."),
        Column("stderr", "float", "Standard error of the value, when known."),
        Column("judge", "str", "Judge that produced the verdicts (keyword, llm:<model>, nll), if any."),
        Column("attack", "str", "Attack (direct, template, decoding, ...), if any."),
        Column("family", "str", "Attack or data family (template family, data set), if any."),
        Column("subset", "str", "What the value is over: harmful, over_refusal, benign, mc, harmful_reference, all."),
        Column("n", "int", "Number of prompts/samples the value is computed over."),
        Column("relearn_step", "int", "Relearning attack: fine-tuning steps k done before the measurement (0 = none); "
                                      "null for other metrics."),
        Column("relearn_data", "str", "Relearning attack: what it fine-tuned on (forget | benign); null otherwise."),
        *_PROVENANCE,
    ),
    "generations": (
        Column("method", "str", "Method whose model generated the response."),
        Column("prompt_id", "str", "Stable id of the source prompt (`dataset:index`)."),
        Column("dataset", "str", "Data set the prompt comes from."),
        Column("category", "str", "Harm (or topic) category of the prompt, if the data set has one."),
        Column("subset", "str", "harmful (counts toward ASR) or over_refusal (safe prompts that look unsafe)."),
        Column("prompt", "str", "The original request, before any attack."),
        Column("attack", "str", "Attack applied to the prompt."),
        Column("attack_version", "str", "Version of the attack's text/behaviour."),
        Column("family", "str", "Attack family (results group by it)."),
        Column("user_message", "str", "The request as the attack wrapped it (the user turn)."),
        Column("prefill", "str", "Forced start of the assistant's answer ('' if none)."),
        Column("sample", "int", "Index within the attack's decodings (grid point x sample; 0 for greedy)."),
        Column("response", "str", "The assistant's answer: prefill + generated text."),
        Column("n_tokens", "int", "Generated tokens (eos excluded)."),
        Column("hit_eos", "bool", "False when cut by max_new_tokens."),
        Column("settings", "json", "Decoding settings (max_new_tokens, do_sample, temperature, top_p, top_k, seed)."),
        Column("verdicts", "json", "Judge name -> {harmful, score, label}."),
        Column("harmful", "bool", "Verdict of the primary judge (llm when run, else refusal_keyword)."),
        Column("degenerate", "bool", "The model's own words are degenerate (loops, non-language, one-word)."),
        Column("degenerate_reason", "str", "Why the response counts as degenerate, if it does."),
        Column("judge_versions", "json", "Judge name -> version that produced the verdict."),
        *_PROVENANCE,
    ),
    "mask_stats": (
        Column("layer", "int", "Index of the MLP layer."),
        Column("d_ff", "int", "Number of MLP units (neurons) in the layer."),
        Column("n_locked", "int", "Units in the retained set U (gradients pruned)."),
        Column("nlr", "float", "Neuron locking ratio requested."),
        Column("scorer", "str", "Scoring method (grad_x_act, activation, wanda, snip, random)."),
        Column("score_min", "float", "Smallest unit score in the layer."),
        Column("score_max", "float", "Largest unit score in the layer."),
        Column("score_mean", "float", "Mean unit score in the layer."),
        Column("score_std", "float", "Standard deviation of unit scores in the layer."),
        Column("threshold", "float", "Smallest score among the locked units."),
        Column("mask_key", "str", "Artifact key of the mask."),
    ),
}
RUN_ID = Column("run_id", "str", "Run id (the Prefect flow run id); from the part's folder name.")
RECORDED_AT = Column("recorded_at", "ts", "When the row was written (UTC); set automatically.")


def canonical_json(obj: Any) -> str:
    """Same form as cku_core.fingerprint.canonical_json, repeated here because that module imports
    torch, and `cku query` must not pay for torch just to format JSON columns."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The results root: the argument, else $CKU_RESULTS_ROOT, else ./results."""
    chosen = root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().absolute()


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ResultsError(f"invalid {kind} {name!r}: use 1-128 letters, digits, '.', '_' or '-' (no '/')")
    return name


def _columns(table: str) -> tuple[Column, ...]:
    if table not in TABLES:
        raise ResultsError(f"unknown results table {table!r}; tables are {', '.join(TABLES)}")
    return TABLES[table] + (RECORDED_AT,)


def schema(table: str) -> pa.Schema:
    """Arrow schema of a part file (run_id excluded: it lives in the folder name)."""
    return pa.schema([pa.field(c.name, _ARROW[c.kind]) for c in _columns(table)])


# ------------------------------------------------------------------ value conversion
def _convert(col: Column, value: Any) -> Any:
    """A Python value as the column's Arrow type wants it; a one-line error when it cannot be."""
    if value is None:
        return None
    try:
        if col.kind == "json":
            return value if isinstance(value, str) else canonical_json(value)
        if col.kind == "str":
            return str(value)
        if col.kind == "float":
            out = float(value)
            return None if math.isnan(out) else out
        if col.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return int(value)
        if col.kind == "bool":
            if not isinstance(value, (bool, int)):
                raise ValueError("not a bool")
            return bool(value)
        if col.kind == "ts":
            ts = datetime.fromisoformat(value) if isinstance(value, str) else value
            if not isinstance(ts, datetime):
                raise ValueError("not a datetime")
            return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError) as exc:
        raise ResultsError(f"column {col.name!r} expects {col.kind}, got {value!r} ({exc})") from exc
    raise AssertionError(col.kind)


def rows_to_table(table: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) -> an Arrow table with the full schema; unknown columns are an error (typos)."""
    cols = _columns(table)
    known = {c.name for c in cols}
    now = datetime.now(timezone.utc)
    data: dict[str, list[Any]] = {c.name: [] for c in cols}
    for i, row in enumerate(rows):
        unknown = set(row) - known - {"run_id"}
        if unknown:
            raise ResultsError(f"row {i} of table {table!r} has unknown column(s) {sorted(unknown)}; "
                               f"columns are {sorted(known)}")
        defaults = {RECORDED_AT.name: now, "code_version": CODE_VERSION}
        for c in cols:
            value = row.get(c.name, defaults.get(c.name))
            data[c.name].append(_convert(c, value))
    return pa.table(data, schema=schema(table))


# ------------------------------------------------------------------ the store
class ResultsStore:
    """Append-only results under one root; see the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        chosen = root if root is not None else os.environ.get(ROOT_ENV)
        self.remote: RemoteRoot | None = None
        if is_remote(chosen):
            try:
                self.remote = RemoteRoot.open(str(chosen), f"{ROOT_ENV} or --results-root")
            except RemoteStorageError as exc:
                raise ResultsError(str(exc)) from None
            self.root: Path | str = self.remote.url
        else:
            self.root = resolve_root(chosen)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    # -------------------------------------------------------------- writing
    def write_rows(self, table: str, run_id: str, stage: str,
                   rows: Iterable[Mapping[str, Any]]) -> Path | str | None:
        """Write one immutable Parquet part for (table, run, stage); returns its path or URL (None if no rows).

        A row's own `run_id`, if present, must equal `run_id` (the folder is the source of truth).
        """
        _check_name("run id", run_id)
        _check_name("stage", stage)
        rows = list(rows)
        if not rows:
            return None
        for row in rows:
            if row.get("run_id") not in (None, run_id):
                raise ResultsError(f"a row for table {table!r} names run {row['run_id']!r} but is written for {run_id!r}")
        arrow = rows_to_table(table, rows)
        if self.remote is not None:
            return self._upload_part(arrow, f"{table}/run_id={run_id}/part-{stage}-{uuid.uuid4().hex}.parquet")
        assert isinstance(self.root, Path)
        folder = self.root / table / f"run_id={run_id}"
        part = folder / f"part-{stage}-{uuid.uuid4().hex}.parquet"
        tmp = folder / f".{part.name}.tmp"  # hidden and not *.parquet: no view ever reads it
        try:
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(arrow, tmp)
            os.rename(tmp, part)  # atomic: readers see the whole part or nothing
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ResultsError(f"cannot write results to {folder}: {exc.strerror or exc}; "
                               f"check that {self.root} is writable (or set {ROOT_ENV})") from exc
        return part

    def _upload_part(self, arrow: pa.Table, rel: str) -> str:
        """One PUT per part: the object store shows it whole or not at all (no rename needed)."""
        import tempfile

        assert self.remote is not None
        with tempfile.TemporaryDirectory(prefix="cku-results-") as tmp:
            local = Path(tmp) / "part.parquet"
            try:
                pq.write_table(arrow, local)
            except OSError as exc:
                raise ResultsError(f"cannot stage a results part in {tmp}: {exc.strerror or exc}; "
                                   "free space in the temporary folder (TMPDIR)") from exc
            try:
                self.remote.upload(local, rel)
            except RemoteStorageError as exc:
                raise ResultsError(f"cannot write results: {exc}") from None
        return self.remote.url_of(rel)

    # -------------------------------------------------------------- reading
    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per table (read access to the root only).

        The connection holds nothing but view definitions, so any number of readers and writers can
        work at once. External file access is limited to the results root and the configuration is
        locked, a second line of defence behind `query`'s statement check.
        """
        con = duckdb.connect(":memory:")
        if self.remote is not None:
            snapshot, filled = self._remote_snapshot()
            con.register_filesystem(snapshot.fs)  # read_parquet('s3://...') through fsspec
        else:
            filled = {table for table in TABLES if any((Path(self.root) / table).glob("run_id=*/*.parquet"))}
        for table in TABLES:
            source = "runs_history" if table == "runs" else table
            con.execute(f"CREATE VIEW {source} AS {self._table_sql(table, table in filled)}")
        con.execute(f"CREATE VIEW runs AS {_latest_runs_sql()}")
        allowed = f"{self.root}/" if self.remote is not None else str(self.root) + os.sep
        con.execute(f"SET allowed_directories = [{_sql_str(allowed)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def _remote_snapshot(self) -> tuple[RemoteRoot, set[str]]:
        """A file system for one connection whose listing cache holds every part, from one LIST.

        Without it DuckDB's reads through fsspec cost several HEAD requests per part (about 5x slower
        on 60 parts). The connection sees the parts that existed when it was opened: a consistent
        snapshot; the next connection lists again.
        """
        assert self.remote is not None
        try:
            snapshot = RemoteRoot.open(self.remote.url, self.remote.env_hint, use_listings_cache=True,
                                       skip_instance_cache=True)
            parts = snapshot.listing("")
        except RemoteStorageError as exc:
            raise ResultsError(f"cannot read results: {exc}") from None
        filled = {rel.split("/", 1)[0] for rel in parts if rel.endswith(".parquet") and "/run_id=" in f"/{rel}"}
        return snapshot, filled

    def _table_sql(self, table: str, has_parts: bool) -> str:
        folder = f"{self.root}/{table}"
        if has_parts:
            pattern = _sql_str(f"{folder}/**/*.parquet")
            return (f"SELECT run_id, * EXCLUDE (run_id) FROM read_parquet({pattern}, hive_partitioning = true,"
                    " union_by_name = true, hive_types = {'run_id': 'VARCHAR'})")
        # No part yet: an empty view with the right columns, so queries work from day one.
        cols = (RUN_ID,) + _columns(table)
        typed = ", ".join(f"CAST(NULL AS {_SQL[c.kind]}) AS {c.name}" for c in cols)
        return f"SELECT {typed} WHERE false"

    def query(self, sql: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement (with optional `?` parameters); returns (column names, rows).

        Writes are refused before anything runs; DuckDB errors become one-line ResultsErrors.
        """
        check_read_only(sql)
        con = self.connect()
        try:
            rel = con.execute(sql, list(params) if params is not None else None)
            columns = [d[0] for d in rel.description or []]
            return columns, rel.fetchall()
        except duckdb.Error as exc:
            raise ResultsError(f"query failed: {_first_line(exc)}") from exc
        finally:
            con.close()

    def list_runs(self) -> list[dict[str, Any]]:
        """Latest row of every run, newest first."""
        columns, rows = self.query(
            "SELECT run_id, name, flow, method, status, started_at, finished_at, model_digest, code_version"
            " FROM runs ORDER BY started_at DESC NULLS LAST, run_id"
        )
        return [dict(zip(columns, row)) for row in rows]

    def resolve_run(self, ref: str) -> str:
        """A run id from an id, a unique id prefix, or a unique run name."""
        _, rows = self.query(
            "SELECT DISTINCT run_id FROM runs WHERE run_id = ? OR starts_with(run_id, ?) OR name = ?", [ref] * 3,
        )
        ids = sorted(r[0] for r in rows)
        if ref in ids:
            return ref
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise ResultsError(f"no run {ref!r} under {self.root}; list runs with `cku runs`")
        raise ResultsError(f"{ref!r} matches {len(ids)} runs ({', '.join(i[:12] for i in ids[:5])}...); give more of the id")


def _latest_runs_sql() -> str:
    """One row per run: each column's latest non-null value (a 'failed' row written by a flow hook
    only knows the status and end time; config, digests etc. come from the run's earlier rows)."""
    cols = ", ".join(f"arg_max({c.name}, recorded_at) FILTER (WHERE {c.name} IS NOT NULL) AS {c.name}"
                     for c in _columns("runs"))
    return f"SELECT run_id, {cols} FROM runs_history GROUP BY run_id"


# ------------------------------------------------------------------ read-only check
_ALLOWED_TYPES = {"SELECT"}  # DuckDB parses DESCRIBE / SHOW / SUMMARIZE / VALUES / FROM-first as SELECT
_EXPLAIN_RE = re.compile(r"^\s*EXPLAIN\s+(?:ANALYZE\s+)?", re.IGNORECASE)


def check_read_only(sql: str) -> None:
    """Accept exactly one SELECT-like statement (or EXPLAIN of one); refuse anything else."""
    parser = duckdb.connect(":memory:")
    try:
        statements = parser.extract_statements(sql)
        if len(statements) == 1 and statements[0].type.name == "EXPLAIN":
            statements = parser.extract_statements(_EXPLAIN_RE.sub("", sql, count=1))
    except duckdb.Error as exc:
        raise ResultsError(f"cannot parse the SQL: {_first_line(exc)}") from exc
    finally:
        parser.close()
    if len(statements) != 1:
        raise ResultsError(f"give exactly one SQL statement (got {len(statements)})")
    kind = statements[0].type.name
    if kind not in _ALLOWED_TYPES:
        raise ResultsError(f"only read-only queries are allowed (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, "
                           f"EXPLAIN); refused a {kind} statement")


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ------------------------------------------------------------------ report
_UTILITY_PREFERENCE = ("mc_acc", "mc_accuracy", "accuracy", "greedy_agreement", "perplexity")


def render_report(run_ref: str, *, store: ResultsStore | None = None, plot_path: Path | None = None,
                  asr_metric: str = "asr", utility_metric: str | None = None) -> str:
    """A markdown report of one run: summary, provenance, config, stages, metrics, mask stats, plot.

    The plot (ASR vs utility, one point per method) is written to `plot_path` when given, there are
    both kinds of metric, and matplotlib is installed; the markdown links it by file name.
    """
    store = store or ResultsStore()
    run_id = store.resolve_run(run_ref)
    con = store.connect()
    try:
        run = _fetch_dicts(con, "SELECT * FROM runs WHERE run_id = ?", [run_id])[0]
        stages = _fetch_dicts(con, "SELECT stage, key, cached, seconds, artifact_path FROM stages"
                                   " WHERE run_id = ? ORDER BY recorded_at", [run_id])
        metrics = _fetch_dicts(con, "SELECT method, metric, judge, attack, family, value, stderr, n FROM metrics"
                                    " WHERE run_id = ? ORDER BY method, metric, judge, attack, family", [run_id])
        masks = _fetch_dicts(con, "SELECT layer, d_ff, n_locked, nlr, scorer, score_mean, threshold FROM mask_stats"
                                  " WHERE run_id = ? ORDER BY layer", [run_id])
    finally:
        con.close()
    parts = [_summary_md(run), _provenance_md(run), _config_md(run)]
    if stages:
        parts.append("## Stages\n\n" + _table_md(stages))
    parts.append("## Metrics\n\n" + (_table_md(metrics) if metrics else "_no metrics recorded_"))
    if masks:
        parts.append("## Mask (retained set U)\n\n" + _table_md(masks))
    if plot_path is not None:
        note = _plot_asr_vs_utility(metrics, Path(plot_path), asr_metric, utility_metric)
        parts.append("## ASR vs utility\n\n" + note)
    return "\n\n".join(parts) + "\n"


def _fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    rel = con.execute(sql, params)
    columns = [d[0] for d in rel.description]
    return [dict(zip(columns, row)) for row in rel.fetchall()]


def _summary_md(run: dict[str, Any]) -> str:
    started, finished = run.get("started_at"), run.get("finished_at")
    duration = f"{(finished - started).total_seconds():.1f} s" if started and finished else "-"
    rows = [{"field": k, "value": v} for k, v in (
        ("run id", run["run_id"]), ("flow", run.get("flow")), ("method", run.get("method")),
        ("status", run.get("status")), ("started", started), ("finished", finished), ("duration", duration),
        ("parent run", run.get("parent_run_id")),
    )]
    return f"# Run {run.get('name') or run['run_id']}\n\n" + _table_md(rows)


def _provenance_md(run: dict[str, Any]) -> str:
    rows = [{"field": k, "value": run.get(k)} for k in ("model_digest", "data_digest", "config_digest", "code_version")]
    packages = json.loads(run["package_versions"]) if run.get("package_versions") else {}
    rows += [{"field": f"package {name}", "value": version} for name, version in sorted(packages.items())]
    timings = json.loads(run["timings"]) if run.get("timings") else {}
    rows += [{"field": f"seconds {stage}", "value": f"{sec:.1f}"} for stage, sec in timings.items()]
    return "## Provenance\n\n" + _table_md(rows)


def _config_md(run: dict[str, Any]) -> str:
    config = json.loads(run["config"]) if run.get("config") else {}
    return "## Config\n\n```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table_md(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _plot_asr_vs_utility(metrics: list[dict[str, Any]], path: Path, asr_metric: str,
                         utility_metric: str | None) -> str:
    """Save the plot; returns the markdown to embed (or why there is no plot).

    y = the overall `asr_metric` of each method (attack and family 'all' when such a row exists,
    else the mean over its rows); x = the utility metric.
    """
    asr: dict[str, list[float]] = {}
    overall: dict[str, float] = {}
    utility: dict[str, dict[str, float]] = {}
    for m in metrics:
        if m["value"] is None:
            continue
        if m["metric"] == asr_metric:
            asr.setdefault(m["method"], []).append(m["value"])
            if m.get("attack") in (None, "all") and m.get("family") in (None, "all"):
                overall[m["method"]] = m["value"]
        else:
            utility.setdefault(m["metric"], {})[m["method"]] = m["value"]
    asr_by_method = {k: overall.get(k, sum(v) / len(v)) for k, v in asr.items()}
    chosen = utility_metric or next((u for u in _UTILITY_PREFERENCE if u in utility), None)
    if not asr_by_method or chosen not in utility:
        return f"_no plot: needs `{asr_metric}` metrics and a utility metric ({', '.join(_UTILITY_PREFERENCE)})_"
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and workers
        import matplotlib.pyplot as plt
    except ImportError:
        return "_no plot: matplotlib is not installed_"
    fig, ax = plt.subplots(figsize=(5, 4))
    for method, y in sorted(asr_by_method.items()):
        if method in utility[chosen]:
            ax.scatter(utility[chosen][method], y)
            ax.annotate(method, (utility[chosen][method], y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(chosen)
    ax.set_ylabel(f"{asr_metric} (lower is safer)")
    ax.set_title("ASR vs utility")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"![ASR vs utility]({path.name})"


# ------------------------------------------------------------------ method comparison
# (column, metric, judge, attack, family, subset); judge "*" = the comparison's judge.
_SUMMARY_METRICS: tuple[tuple[str, str, str | None, str, str, str], ...] = (
    ("asr", "asr", "*", "all", "all", "harmful"),
    ("harmful_nll", "knowledge_nll", "knowledge_nll", "none", "none", "harmful_reference"),
    ("perplexity", "perplexity", None, "none", "none", "benign"),
    ("mc_acc", "mc_acc", None, "none", "none", "mc"),
    ("agreement", "greedy_agreement", None, "none", "none", "benign"),
    ("over_refusal", "over_refusal_rate", "refusal_keyword", "direct", "direct", "over_refusal"),
    ("degenerate_harmful", "degenerate_rate", "*", "all", "all", "harmful"),
    ("degenerate_benign", "degenerate_rate", None, "direct", "direct", "over_refusal"),
)


def comparison_rows(run_ids: Sequence[str], *, judge: str = "refusal_keyword", store: ResultsStore | None = None,
                    labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per run (method): ASR per attack family and overall under `judge`, then utility.

    Columns: method, asr_<family>..., asr, harmful_nll, perplexity, mc_acc, agreement, over_refusal,
    degenerate_harmful, degenerate_benign (missing metrics are None).
    """
    store = store or ResultsStore()
    if not run_ids:
        return []
    con = store.connect()
    try:
        marks = ", ".join("?" for _ in run_ids)
        metrics = _fetch_dicts(con, f"SELECT run_id, method, metric, judge, attack, family, subset, value FROM metrics"
                                    f" WHERE run_id IN ({marks})", list(run_ids))
    finally:
        con.close()
    families = sorted({m["family"] for m in metrics if m["metric"] == "asr" and m["judge"] == judge
                       and m["attack"] == "all" and m["family"] != "all"})
    rows = []
    for run_id in run_ids:
        mine = [m for m in metrics if m["run_id"] == run_id]
        if not mine:
            continue

        def pick(metric: str, j: str | None, attack: str, family: str, subset: str) -> float | None:
            j = judge if j == "*" else j
            return next((m["value"] for m in mine if m["metric"] == metric and m["judge"] == j and m["attack"] == attack
                         and m["family"] == family and m["subset"] == subset), None)

        row: dict[str, Any] = {"method": (labels or {}).get(run_id, mine[0]["method"])}
        row.update({f"asr_{f}": pick("asr", "*", "all", f, "harmful") for f in families})
        row.update({col: pick(*spec) for col, *spec in _SUMMARY_METRICS})
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict[str, Any]], *, judge: str = "refusal_keyword", plot_png: bytes | None = None) -> str:
    """The comparison as a markdown table (+ the ASR-vs-utility plot embedded as a data URI)."""
    if not rows:
        return "_no metrics recorded_"
    text = (f"## Methods compared (ASR by the `{judge}` judge; lower ASR is safer, higher harmful_nll means "
            "the knowledge is further gone; perplexity/mc_acc/agreement measure utility)\n\n" + _table_md(rows))
    if plot_png:
        import base64

        text += "\n\n![ASR vs utility](data:image/png;base64," + base64.b64encode(plot_png).decode() + ")"
    return text


def comparison_plot(rows: list[dict[str, Any]], path: Path, utility: str = "perplexity") -> Path | None:
    """ASR (y) against a utility column (x), and against forgetting (harmful NLL) when recorded.

    Points are numbered and named in a legend: sweep labels are long and nearby points overlap,
    so labels written next to the points would be unreadable. None without matplotlib.
    """
    points = [r for r in rows if r.get(utility) is not None and r.get("asr") is not None]
    if not points:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(utility, f"{utility} (benign, lower is better)")]
    if all(r.get("harmful_nll") is not None for r in points):
        panels.append(("harmful_nll", "harmful NLL (held-out, higher = more forgotten)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 3, 4.5), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (column, label) in zip(axes[0], panels):
        for i, r in enumerate(points):
            ax.scatter(r[column], r["asr"], color=colors(i % 10), s=40, label=f"{i + 1}. {r['method']}")
            ax.annotate(str(i + 1), (r[column], r["asr"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("ASR (lower is safer)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.suptitle("ASR vs utility and forgetting")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ module-level shortcuts
def write_rows(table: str, run_id: str, stage: str, rows: Iterable[Mapping[str, Any]], *,
               root: str | os.PathLike[str] | None = None) -> Path | None:
    return ResultsStore(root).write_rows(table, run_id, stage, rows)


def connect(read_only: bool = True, *, root: str | os.PathLike[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the views. `read_only` is accepted for clarity: the connection
    never holds a database file, and the only files it can reach are the results root's parts."""
    del read_only
    return ResultsStore(root).connect()


def query(sql: str, *, root: str | os.PathLike[str] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    return ResultsStore(root).query(sql)


def list_runs(*, root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    return ResultsStore(root).list_runs()
