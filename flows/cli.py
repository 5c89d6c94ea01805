"""The `cku` command line: query results, list runs, render reports, start the Prefect server, run flows.

Flows (and therefore Prefect, torch and transformers) are imported only by the subcommands that run
them, so `cku query` and `cku runs` start in well under a second.
Every CKUError is printed as `error: <message>` on stderr with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cku_core.errors import CKUError

EXIT_USAGE = 2


# ------------------------------------------------------------------ output
def _cell(value: Any, width: int) -> str:
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, datetime):
        text = value.isoformat(timespec="seconds")
    else:
        text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """An aligned plain-text table (cells longer than max_width are cut with '…')."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def print_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, max_width: int) -> None:
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[_cell(v, 10**9) for v in row] for row in rows])
    elif fmt == "json":
        print(json.dumps([dict(zip(columns, row)) for row in rows], indent=2, default=str))
    else:
        print(format_table(columns, rows, max_width))


# ------------------------------------------------------------------ subcommands
def cmd_query(args: argparse.Namespace) -> int:
    from cku_core.results import ResultsStore

    columns, rows = ResultsStore(args.results_root).query(args.sql)
    print_rows(columns, rows, args.format, args.max_width)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from cku_core.results import ResultsStore

    runs = ResultsStore(args.results_root).list_runs()
    columns = ["run_id", "name", "flow", "method", "status", "started_at", "finished_at"]
    print_rows(columns, [[r[c] for c in columns] for r in runs], args.format, args.max_width)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cku_core.results import ResultsStore, render_report

    out: Path | None = args.out
    if args.labels and not args.matched:
        raise CKUError("--labels selects points of a matched-forgetting run; add --matched (or drop --labels)")
    if args.matched:  # a cku-matched run: curves, matched levels and verdicts instead of one run's metrics
        from cku_core.analysis.matched_report import render_matched_report

        plot = out.with_name(out.stem + "-curves.png") if out else None
        labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
        markdown = render_matched_report(args.run, store=ResultsStore(args.results_root), plot_path=plot, labels=labels)
    else:
        plot = out.with_name(out.stem + "-asr-utility.png") if out else None
        markdown = render_report(args.run, store=ResultsStore(args.results_root), plot_path=plot)
    if out is None:
        sys.stdout.write(markdown)
        return 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown, encoding="utf-8")
    except OSError as exc:
        raise CKUError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    print(f"wrote {out}" + (f" and {plot}" if plot and plot.exists() else ""))
    return 0


def server_command(host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a local, offline Prefect server (analytics off: see notes-stack).

    The UI learns the API address from settings, not from --port: without PREFECT_UI_API_URL it
    would call http://127.0.0.1:4200/api whatever port the server listens on.
    """
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_API_HOST=host, PREFECT_SERVER_API_PORT=str(port))
    env.setdefault("PREFECT_UI_API_URL", f"http://{host}:{port}/api")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    return cmd, env


def cmd_server(args: argparse.Namespace) -> int:
    cmd, env = server_command(args.host, args.port)
    print(f"starting the Prefect server on http://{args.host}:{args.port} (UI and API; Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    # exec: the server takes over this pid, so signals (Ctrl-C, a test's SIGTERM) reach it directly.
    os.execve(sys.executable, cmd, env)
    return 0  # pragma: no cover


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`a.b=value` pairs -> nested dict; values are parsed as YAML scalars (numbers, bools, null, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise CKUError(f"--set expects key=value, got {pair!r}")
        dotted, raw = pair.split("=", 1)
        node = out
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_parameters(config: Path | None, overrides: Sequence[str], preset: str | None = None,
                    accepted: Sequence[str] | None = None) -> dict[str, Any]:
    """Flow parameters: a preset, then a YAML/JSON file, then --set overrides (later ones win).

    A preset serves several flows, so its keys that the flow does not take (`accepted`) are dropped;
    unknown keys from a file or --set are still errors.
    """
    base: dict[str, Any] = {}
    if preset is not None:
        from flows.presets import preset as get_preset

        base = get_preset(preset)
        if accepted is not None:
            base = {k: v for k, v in base.items() if k in accepted}
    params: dict[str, Any] = {}
    if config is not None:
        import yaml

        try:
            params = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise CKUError(f"cannot read config {config}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise CKUError(f"config {config} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from exc
        if not isinstance(params, dict):
            raise CKUError(f"config {config} must be a mapping of flow parameters")
    return _deep_merge(_deep_merge(base, params), _parse_overrides(overrides))


def _load_flow(module: str, name: str) -> Callable[..., Any]:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name not in (module, module.split(".")[0]):
            raise  # a missing dependency is a real error, keep its traceback
        raise CKUError(f"the flow {module}:{name} is not available in this checkout") from exc


def _one_line(text: str) -> str:
    return "; ".join(line.strip(" -") for line in text.strip().splitlines() if line.strip(" -"))


def check_parameters(flow: Any, params: dict[str, Any]) -> None:
    """Validate parameters before a run exists, so a typo is one line, not a failed run in the UI."""
    import inspect

    from prefect.exceptions import ParameterTypeError, SignatureMismatchError

    unknown = sorted(set(params) - set(inspect.signature(flow.fn).parameters))
    if unknown:
        raise CKUError(f"unknown parameter(s) {', '.join(unknown)} for flow {flow.name}; "
                       f"it takes {', '.join(inspect.signature(flow.fn).parameters)}")
    quiet = logging.getLogger("prefect.flows")  # it logs the raw pydantic errors before raising
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        flow.validate_parameters(params)
    except (ParameterTypeError, SignatureMismatchError) as exc:
        lines = str(exc).strip().splitlines()
        raise CKUError("invalid parameters: " + _one_line("\n".join(lines[1:] or lines))) from exc
    finally:
        quiet.setLevel(level)


def _run_flow(module: str, name: str, args: argparse.Namespace) -> int:
    load_parameters(args.config, args.set, args.preset)  # config errors first: before heavy imports
    flow = _load_flow(module, name)
    import inspect

    params = load_parameters(args.config, args.set, args.preset, accepted=list(inspect.signature(flow.fn).parameters))
    check_parameters(flow, params)
    from flows.preflight import preflight_flow

    preflight_flow(flow, params)  # bad model/data/layers/roots: one line, before a run or artifact exists
    from tasks.storage import shared_result_storage

    with shared_result_storage():  # object-store artifact root: Prefect's cache records go there too
        state = flow(**params, return_state=True)
        if not state.is_completed():
            raise _failure(state)
        result = state.result()
    if isinstance(result, dict) and result.get("table"):
        print(format_table(list(result["table"][0]), [tuple(r.values()) for r in result["table"]], 14))
    if isinstance(result, dict) and "run_id" in result:
        print(f"run {result['run_id']} ({result.get('name')}) completed; `cku report {result['run_id'][:8]}` shows it")
    return 0


def _failure(state: Any) -> CKUError:
    """The CKUError that failed the run (its own one-line message), else a one-line summary of the state."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable result: fall back to the state message
        exc = None
    if isinstance(exc, CKUError):
        return exc
    return CKUError(f"flow run ended {state.type.value.lower()}: {_one_line(state.message or 'see the Prefect UI')}")


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the original model, CKU, GA without a mask and CKU with a random U, compared."""
    if args.preset is None and args.config is None:
        args.preset = "smollm2"
    return _run_flow("flows.baselines", "compare_baselines", args)


def cmd_sweep(args: argparse.Namespace) -> int:
    """The paper's NLR and layer-band analyses on the default model (preset smollm2)."""
    if args.preset is None and args.config is None:
        args.preset = "smollm2"
    return _run_flow("flows.sweep", "cku_sweep", args)


def cmd_matched(args: argparse.Namespace) -> int:
    """Methods (or NLR points / layer bands) compared at matched forgetting (preset smollm2-matched)."""
    if args.preset is None and args.config is None:
        args.preset = "smollm2-matched"
    return _run_flow("flows.matched", "cku_matched", args)


def cmd_relearn(args: argparse.Namespace) -> int:
    """The relearning attack: fine-tune each method's unlearned model for k steps, measure after each k."""
    if args.preset is None and args.config is None:
        args.preset = "smollm2"
    return _run_flow("flows.relearn", "cku_relearn", args)


# ------------------------------------------------------------------ parser
def _root(text: str) -> str:
    """A root option: an object-store URL as given (s3://bucket/prefix), a folder made absolute."""
    from cku_core.remote import is_remote

    return text if is_remote(text) else str(Path(text).absolute())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cku", description="Constrained Knowledge Unlearning as a Prefect workflow.")
    parser.add_argument("--results-root", type=_root, default=None,
                        help="results folder (default: $CKU_RESULTS_ROOT or ./results)")
    parser.add_argument("--artifact-root", type=_root, default=None,
                        help="artifact folder for runs (default: $CKU_ARTIFACT_ROOT or ./artifacts)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_format(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
        p.add_argument("--max-width", type=int, default=60, help="cut table cells longer than this")

    p = sub.add_parser("query", help="run one read-only SQL query on the results (views: runs, stages, metrics, "
                                     "generations, mask_stats, runs_history)")
    p.add_argument("sql", help='e.g. "SELECT method, metric, value FROM metrics"')
    add_format(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("runs", help="list recorded runs, newest first")
    add_format(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("report", help="markdown report of one run (id, id prefix or name)")
    p.add_argument("run")
    p.add_argument("--out", type=Path, default=None, help="write the markdown here (and the ASR-vs-utility PNG beside it)")
    p.add_argument("--matched", action="store_true",
                   help="RUN is a `cku matched` run: report its forgetting-utility curves and verdicts (PNG: <out>-curves.png)")
    p.add_argument("--labels", default=None,
                   help="with --matched: compare only these points, comma-separated (e.g. 'layers=8-12,layers=3-7'); "
                        "the common forgetting range widens when a point that barely forgets is left out")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("server", help="start the local Prefect server and UI (127.0.0.1, analytics off)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4200)
    p.set_defaults(func=cmd_server)

    for name, func, text in (("run", cmd_run, "run the CKU pipeline once"),
                             ("sweep", cmd_sweep, "run the NLR x layer band x objective sweep"),
                             ("matched", cmd_matched, "compare methods, NLRs or layer bands at matched forgetting "
                                                      "(LR grid x seeds per point)"),
                             ("relearn", cmd_relearn, "relearning attack: how fast unlearned knowledge comes back "
                                                      "under k fine-tuning steps")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--preset", default=None, help="named parameter set from flows/presets.py (e.g. tiny)")
        p.add_argument("--config", type=Path, default=None, help="YAML/JSON file of flow parameters")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one parameter (dotted keys for nested ones); repeatable")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Without PREFECT_API_URL, Prefect starts a temporary server from this environment: offline,
    # its telemetry job would log a "Failed to send telemetry" error every few minutes.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Roots travel as environment variables so flow and task processes see the same folders.
    if args.results_root is not None:
        os.environ["CKU_RESULTS_ROOT"] = str(args.results_root)
    if args.artifact_root is not None:
        os.environ["CKU_ARTIFACT_ROOT"] = str(args.artifact_root)
    try:
        return args.func(args)
    except CKUError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
