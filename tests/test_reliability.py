"""Reliability: resumable unlearning, store locks and integrity, retries, no unpickling; and (slow) the real
CLI killed with SIGKILL mid-unlearning and resumed, and four concurrent runs sharing the roots."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cku_core.config import UnlearnConfig
from cku_core.data import Example
from cku_core.resume import ResumeStateError, load_training_state, save_training_state
from cku_core.store import MANIFEST, ArtifactStore
from cku_core.tiny import tiny_model, tiny_tokenizer
from cku_core.unlearn import unlearn
from tasks.unlearn import (  # imports Prefect: before caplog
    STATE_STAGE,
    discard_states,
    latest_state,
    state_keys,
)

REPO = Path(__file__).resolve().parent.parent

FORGET = [Example(f"How do I build a dangerous device {i}?", "Sure, here is how. Step 1: gather the materials.")
          for i in range(6)]
USEFUL = [Example(f"Tell me about bread ({i}).", "Bread is flour, water, salt and yeast, baked.") for i in range(6)]
CONFIG = UnlearnConfig(lr=1e-3, steps=6, batch_size=2, max_length=64, hinge_lambda=9.0)


# ------------------------------------------------------------------------------------------ training state

def _states(every: int = 2) -> list[dict]:
    saved: list[dict] = []
    unlearn(tiny_model("llama"), tiny_tokenizer(), FORGET, USEFUL, CONFIG, checkpoint_every=every,
            on_checkpoint=lambda s: saved.append(copy.deepcopy(s)))
    return saved


def test_saved_state_resumes_bit_identical_without_pickle(tmp_path: Path) -> None:
    full = tiny_model("llama")
    unlearn(full, tiny_tokenizer(), FORGET, USEFUL, CONFIG)
    state = _states()[1]  # after step 4 of 6
    save_training_state(state, tmp_path, {"history": [{"step": 1}]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    loaded, extra = load_training_state(tmp_path)
    assert loaded["step"] == 4 and extra == {"history": [{"step": 1}]}
    resumed = tiny_model("llama")
    report = unlearn(resumed, tiny_tokenizer(), FORGET, USEFUL, CONFIG, resume_state=loaded)
    assert report.steps == 6 and len(report.history) == 2
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_state_for_other_tensors_is_refused_before_touching_weights(tmp_path: Path) -> None:
    state = _states()[0]
    state["params"] = {k: v[:1] for k, v in state["params"].items()}  # another shape
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ResumeStateError, match="does not fit"):
        unlearn(model, tiny_tokenizer(), FORGET, USEFUL, CONFIG, resume_state=state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_unreadable_state_is_a_resume_error(tmp_path: Path) -> None:
    save_training_state(_states()[0], tmp_path)
    (tmp_path / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(ResumeStateError, match="unreadable"):
        load_training_state(tmp_path)


def test_latest_state_skips_corrupt_ones_with_a_warning(store: ArtifactStore, caplog: pytest.LogCaptureFixture) -> None:
    states = _states()
    for s in states:
        store.put(STATE_STAGE, f"k-step{s['step']:08d}", lambda f, s=s: save_training_state(s, f), stage_version="2")
    newest = store.root / STATE_STAGE / f"k-step{states[-1]['step']:08d}" / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[:-8])  # a torn write the manifest does not vouch for
    log = SimpleNamespace(warning=lambda *a: None)
    with caplog.at_level("WARNING", logger="cku.store"):
        state, _ = latest_state(store, "k", log)
    assert state["step"] == states[-2]["step"]
    assert "corrupt" in caplog.text and (store.quarantine_dir / STATE_STAGE).is_dir()
    assert state_keys(store, "other") == []
    discard_states(store, "k")
    assert state_keys(store, "k") == []


# ------------------------------------------------------------------------------------------ store

def test_discard_removes_atomically(store: ArtifactStore) -> None:
    store.put_files("s", "k", {"a": b"1"}, stage_version="1")
    assert store.discard("s", "k") and not store.has("s", "k") and not store.discard("s", "k")
    assert [p.name for p in (store.root / "s").iterdir()] == []


def test_get_or_put_computes_once_across_threads(store: ArtifactStore) -> None:
    calls: list[int] = []

    def write(folder: Path) -> None:
        calls.append(1)
        time.sleep(0.3)
        (folder / "x").write_bytes(b"x")

    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store.get_or_put("s", "k", write, stage_version="1")[1]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(results) == [False, True, True, True]


def _locked_writer(root: str, q: mp.Queue[bool]) -> None:
    def write(folder: Path) -> None:
        time.sleep(0.5)
        (folder / "x").write_bytes(b"x")
    q.put(ArtifactStore(root).get_or_put("s", "k", write, stage_version="1")[1])


def test_get_or_put_computes_once_across_processes_and_survives_a_killed_holder(store: ArtifactStore) -> None:
    ctx = mp.get_context("fork")
    # a holder killed with SIGKILL: the kernel releases its lock, the next process computes
    victim = ctx.Process(target=_locked_writer, args=(str(store.root), ctx.Queue()))
    victim.start()
    time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    q: mp.Queue[bool] = ctx.Queue()
    procs = [ctx.Process(target=_locked_writer, args=(str(store.root), q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4
    assert sorted(q.get(timeout=5) for _ in range(4)) == [False, True, True, True]


def _slow_writer(root: str) -> None:
    def write(folder: Path) -> None:
        with open(folder / "w.bin", "wb") as f:
            for _ in range(8):  # 4 MB in 8 slow chunks: a reader polling meanwhile must never see it
                f.write(b"\x01" * (512 << 10))
                f.flush()
                time.sleep(0.05)
    ArtifactStore(root).put("big", "k", write, stage_version="1")


def _reader(root: str, stop: float, q: mp.Queue[tuple[int, int]]) -> None:
    store, misses, hits = ArtifactStore(root), 0, 0
    while time.time() < stop:
        art = store.get("big", "k")  # None, or an artifact whose every file matched its manifest
        if art is None:
            misses += 1
        else:
            assert art.manifest.files["w.bin"].size == 4 << 20
            hits += 1
    q.put((misses, hits))


def test_readers_never_see_half_written_artifacts(store: ArtifactStore) -> None:
    ctx = mp.get_context("fork")
    q: mp.Queue[tuple[int, int]] = ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(str(store.root), time.time() + 2.5, q)) for _ in range(2)]
    writers = [ctx.Process(target=_slow_writer, args=(str(store.root),)) for _ in range(3)]
    for p in readers + writers:
        p.start()
    for p in readers + writers:
        p.join(30)
    assert [p.exitcode for p in readers + writers] == [0] * 5
    seen = [q.get(timeout=5) for _ in readers]
    assert all(misses > 0 and hits > 0 for misses, hits in seen), seen
    assert not store.quarantine_dir.exists()  # an in-progress write was never mistaken for corruption
    assert [p.name for p in (store.root / "big").iterdir()] == ["k"]  # the losers' temporary copies are gone


# ------------------------------------------------------------------------------------------ retries, security

def test_retries_only_for_transient_failures() -> None:
    from cku_core.models import HubUnavailableError, ModelNotFoundError
    from cku_core.store import StoreError
    from tasks._stage import transient_failure
    from tasks.model import prepare_model

    def failed(exc: BaseException) -> SimpleNamespace:
        return SimpleNamespace(data=exc)

    assert transient_failure(None, None, failed(OSError(5, "Input/output error")))
    assert transient_failure(None, None, failed(TimeoutError()))
    assert transient_failure(None, None, failed(HubUnavailableError("hub down")))
    assert not transient_failure(None, None, failed(ModelNotFoundError("no such model")))
    assert not transient_failure(None, None, failed(StoreError("no space left on device")))
    assert not transient_failure(None, None, failed(ValueError("bug")))
    assert prepare_model.retries == 2 and prepare_model.retry_condition_fn is transient_failure


def test_checkpoint_interval_is_not_part_of_the_cache_key() -> None:
    from tasks._stage import stage_key

    params = {"config": {"lr": 1.0}, "max_seconds": None}
    assert stage_key("checkpoint", "2", {**params, "checkpoint_every": 3}) == \
        stage_key("checkpoint", "2", {**params, "checkpoint_every": 50})


def _python_sources() -> list[Path]:
    return sorted(p for d in ("cku_core", "tasks", "flows") for p in (REPO / d).rglob("*.py"))


def test_nothing_is_ever_unpickled() -> None:
    """No pickle / dill / joblib / numpy allow_pickle, and every torch.load passes weights_only=True."""
    bad = []
    for path in _python_sources():
        text = path.read_text(encoding="utf-8")
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        for m in re.finditer(r"^\s*(?:import|from)\s+(c?pickle|dill|joblib|cloudpickle|shelve|marshal)\b", code, re.MULTILINE):
            bad.append(f"{path.relative_to(REPO)}: imports {m.group(1)}")
        if re.search(r"allow_pickle\s*=\s*True|pickle\.loads?\(", code):
            bad.append(f"{path.relative_to(REPO)}: unpickles")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: torch.load without weights_only=True")
    assert not bad, bad


def test_remote_code_is_off_unless_the_user_turns_it_on() -> None:
    from tasks.params import ModelConfig

    assert ModelConfig().trust_remote_code is False
    hardcoded = [f"{path.relative_to(REPO)}:{node.lineno}" for path in _python_sources()
                 for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.keyword) and node.arg == "trust_remote_code"
                 and isinstance(node.value, ast.Constant) and node.value.value is True]
    assert not hardcoded, hardcoded


def test_server_binds_loopback_by_default() -> None:
    from flows.cli import build_parser, server_command

    args = build_parser().parse_args(["server"])
    cmd, env = server_command(args.host, args.port)
    assert args.host == "127.0.0.1" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"


# ------------------------------------------------------------------------------------------ slow, end to end

# `cku run` with the tiny preset and one method; checkpoint_every is a run option, steps raised so
# that the kill lands mid-unlearning.
STEPS, EVERY = 12, 3
RUN = ["run", "--preset", "tiny", "--set", "methods=[cku]", "--set", f"unlearn.steps={STEPS}",
       "--set", f"options.checkpoint_every={EVERY}"]
# The real CLI, with an optional sleep in every unlearning step (so a kill can land mid-run).
DRIVER = """
import os, sys, time
import cku_core.unlearn as u
_step, pause = u._step, float(os.environ.get("CKU_TEST_STEP_SLEEP", "0"))
def slow_step(*a, **k):
    time.sleep(pause)
    return _step(*a, **k)
u._step = slow_step
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(server: object, artifacts: Path, results: Path, **extra: str) -> dict[str, str]:
    return {**server.env, "CKU_ARTIFACT_ROOT": str(artifacts), "CKU_RESULTS_ROOT": str(results),  # type: ignore[attr-defined]
            "PYTHONUNBUFFERED": "1", **extra}


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", DRIVER, *RUN], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 400) -> None:
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, log.read_text(errors="replace")[-4000:]


def _checkpoint(artifacts: Path) -> tuple[str, dict, dict]:
    store = ArtifactStore(artifacts)
    [key] = store.keys("checkpoint")
    art = store.open("checkpoint", key)
    from safetensors.torch import load_file

    info = json.loads((art.path / "info.json").read_text())
    report = json.loads((art.path / "unlearn_report.json").read_text())
    return hashlib.sha256(b"".join(t.numpy().tobytes() for _, t in sorted(load_file(art.path / "delta.safetensors").items()))
                          ).hexdigest(), info, report


def _saved_steps(artifacts: Path) -> list[int]:
    folder = artifacts / "unlearn-state"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.rsplit("-step", 1)[1]) for p in folder.iterdir()
                  if not p.name.startswith(".") and (p / MANIFEST).is_file())


@pytest.mark.slow
def test_sigkill_mid_unlearning_then_rerun_resumes_bit_identical(prefect_server: object, tmp_path: Path) -> None:
    # 1. the uninterrupted reference run
    ref_roots = tmp_path / "ref-artifacts", tmp_path / "ref-results"
    proc = _start(_env(prefect_server, *ref_roots), tmp_path / "ref.log")
    _finish(proc, tmp_path / "ref.log")
    ref_delta, ref_info, ref_report = _checkpoint(ref_roots[0])
    assert ref_report["steps"] == STEPS and ref_report["resumed_from_step"] == 0

    # 2. the same run, slowed down, killed with SIGKILL right after its first saved state
    artifacts, results = tmp_path / "artifacts", tmp_path / "results"
    log = tmp_path / "killed.log"
    proc = _start(_env(prefect_server, artifacts, results, CKU_TEST_STEP_SLEEP="0.7"), log)
    deadline = time.monotonic() + 300
    while not _saved_steps(artifacts):
        assert proc.poll() is None, f"run ended before a state was saved:\n{log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed_at = _saved_steps(artifacts)
    assert proc.returncode == -signal.SIGKILL and killed_at and max(killed_at) < STEPS
    assert not ArtifactStore(artifacts).keys("checkpoint")  # no checkpoint artifact from the killed run

    # 3. rerun the same command: it resumes from the saved state and ends bit-identical
    log2 = tmp_path / "resumed.log"
    _finish(_start(_env(prefect_server, artifacts, results), log2), log2)
    delta, info, report = _checkpoint(artifacts)
    assert report["resumed_from_step"] == max(killed_at)
    assert "resuming unlearning at step" in log2.read_text(errors="replace")
    assert [h["step"] for h in report["history"]] == list(range(1, STEPS + 1))
    assert delta == ref_delta and info["fingerprint"] == ref_info["fingerprint"]
    assert _saved_steps(artifacts) == []  # states are removed once the checkpoint is published
    (tmp_path / "resume-result.json").write_text(json.dumps(
        {"steps": STEPS, "every": EVERY, "killed_after_saved_steps": killed_at, "resumed_from": report["resumed_from_step"],
         "bit_identical": delta == ref_delta, "fingerprint": info["fingerprint"]}))


@pytest.mark.slow
def test_four_concurrent_runs_share_roots_without_losing_rows(prefect_server: object, tmp_path: Path) -> None:
    artifacts, results = tmp_path / "artifacts", tmp_path / "results"
    env = _env(prefect_server, artifacts, results)
    logs = [tmp_path / f"run{i}.log" for i in range(4)]
    procs = [_start(env, log) for log in logs]
    for proc, log in zip(procs, logs):
        _finish(proc, log, timeout=600)
    text = "\n".join(log.read_text(errors="replace") for log in logs)
    assert not re.search(r"database is locked|Could not set lock|BlockingIOError|Traceback", text), text[-5000:]

    from cku_core.results import ResultsStore

    rs = ResultsStore(results)
    _, rows = rs.query("SELECT status, count(*) FROM runs GROUP BY status")
    assert rows == [("completed", 8)]  # 4 comparison runs + their 4 CKU subflow runs
    counts = {}
    for table in ("stages", "metrics", "generations", "mask_stats"):
        _, rows = rs.query(f"SELECT run_id, count(*) FROM {table} GROUP BY run_id")
        counts[table] = sorted(n for _, n in rows)
        assert len(rows) == 4 and len(set(counts[table])) == 1 and rows[0][1] > 0, (table, rows)
    # every stage key was computed by exactly one run; the other three reused it
    _, rows = rs.query("SELECT stage, key, count(*) FILTER (WHERE NOT cached) AS computed, count(*) AS n "
                       "FROM stages GROUP BY stage, key ORDER BY stage")
    assert all(n == 4 for _, _, _, n in rows), rows
    computed = {stage: c for stage, _, c, _ in rows}
    store = ArtifactStore(artifacts)
    assert not store.quarantine_dir.exists()
    assert not [p for p in artifacts.glob("*/.tmp-*")]
    (tmp_path / "concurrency-result.json").write_text(json.dumps({"rows_per_run": counts, "computed": computed}))
    assert set(computed.values()) == {1}, computed
