"""Bad input, end to end through the `cku` command line: one `error:` line, exit code 2, nothing written.

Most cases fail in the preflight (cku_core.preflight), before a flow run exists: stderr is exactly
one line and neither the artifact root nor the results root gains anything. They run in-process
(`flows.cli.main`), since a subprocess pays ~7 s of imports each; a few go through a real
`python -m flows.cli` subprocess. Three cases can only fail inside a running flow (a full disk, a
mask artifact swapped for one of another model or shape): the flow's own log lines precede the
error line on stderr, the error is still the last line and the only `error:` line, the failed
stage leaves no artifact folder, and only `runs` rows (status failed) are added to the results.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore

REPO = Path(__file__).resolve().parent.parent
TINY = ["--preset", "tiny", "--set", "methods=[cku]"]


# ------------------------------------------------------------------------------------------ helpers

def artifact_folders(root: Path) -> set[str]:
    """stage/key folders and leftovers (.tmp-*) under an artifact root (lock files excluded)."""
    if not root.is_dir():
        return set()
    out = set()
    for stage in root.iterdir():
        if stage.name in (".locks",) or not stage.is_dir():
            continue
        out |= {f"{stage.name}/{p.name}" for p in stage.iterdir()}
    return out


def result_parts(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(code: int, err: str, expect: str) -> str:
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1, f"stderr is not one line:\n{err}"
    assert lines[0].startswith("error: ") and expect.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err
    return lines[0]


def roots() -> tuple[Path, Path]:
    return Path(os.environ["CKU_ARTIFACT_ROOT"]), Path(os.environ["CKU_RESULTS_ROOT"])


# ------------------------------------------------------------------------------------------ bad files

def _tiny_folder(path: Path) -> Path:
    from cku_core.tiny import tiny_model, tiny_tokenizer

    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def make_input(kind: str, tmp: Path) -> str:
    """Create the bad file or folder a case needs; returns its path."""
    from transformers import AutoConfig

    if kind == "not_causal":
        folder = tmp / "t5"
        AutoConfig.for_model("t5", d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=100).save_pretrained(folder)
        return str(folder)
    if kind == "unsupported_arch":
        folder = tmp / "bloom"
        AutoConfig.for_model("bloom", hidden_size=32, n_layer=2, n_head=4, vocab_size=384).save_pretrained(folder)
        return str(folder)
    if kind == "truncated_weights":
        folder = _tiny_folder(tmp / "truncated")
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
        return str(folder)
    if kind == "pickle_weights":
        folder = tmp / "pickled"
        AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, vocab_size=384).save_pretrained(folder)
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
        return str(folder)
    files = {
        "data_empty": ("empty.csv", b""),
        "data_columns": ("columns.csv", b"question,answer\nHow?,Like this.\n"),
        "data_latin1": ("latin1.csv", "prompt\nCaf\xe9 au lait, please\n".encode("latin-1")),
        "data_empty_prompt": ("noprompt.jsonl", (b'{"prompt": "How do I pick a lock?", "response": "No."}\n'
                                                  b'{"prompt": "  ", "response": "Sure."}\n')),
        "data_empty_response": ("noresponse.csv", b"prompt,response\nHow do I pick a lock?,No.\nHow do I steal?,\n"),
    }
    name, data = files[kind]
    (tmp / name).write_bytes(data)
    return str(tmp / name)


# (case id, CLI arguments after `run` (with {path} for make_input's result), input kind or None, expected text)
PREFLIGHT_CASES: list[tuple[str, list[str], str | None, str]] = [
    ("model_path_missing", ["--set", "model.spec=/nonexistent/cku-model"], None, "does not exist"),
    ("model_not_causal_lm", ["--set", "model.spec={path}"], "not_causal", "not a causal"),
    ("model_unsupported_arch", ["--set", "model.spec={path}"], "unsupported_arch", "'bloom' is not supported"),
    ("model_truncated_safetensors", ["--set", "model.spec={path}"], "truncated_weights", "truncated or corrupted"),
    ("model_pickle_only", ["--set", "model.spec={path}"], "pickle_weights", "never unpickles"),
    ("model_unknown_tiny_type", ["--set", "model.spec=tiny:bert"], None, "unknown tiny model type"),
    ("data_file_missing", ["--set", "data.harmful_datasets=[/nonexistent/forget.csv]"], None, "does not exist"),
    ("data_file_empty", ["--set", "data.harmful_datasets=[{path}]"], "data_empty", "is empty"),
    ("data_wrong_columns", ["--set", "data.harmful_datasets=[{path}]"], "data_columns", "has no column(s) ['prompt']"),
    ("data_not_utf8", ["--set", "data.harmful_datasets=[{path}]"], "data_latin1", "not valid UTF-8"),
    ("data_empty_prompt", ["--set", "data.harmful_datasets=[{path}]"], "data_empty_prompt", "row 2 has an empty prompt"),
    ("data_empty_response", ["--set", "data.harmful_datasets=[{path}]"], "data_empty_response", "empty response"),
    ("data_split_too_large", ["--set", "data.n_forget=100000"], None, "needs 100000 prompts"),
    ("nlr_above_1", ["--set", "mask.nlr=1.5"], None, "nlr must be within [0, 1]"),
    ("nlr_negative", ["--set", "mask.nlr=-0.1"], None, "nlr must be within [0, 1]"),
    ("layers_out_of_range", ["--set", "scoring.layers=[1,7]"], None, "[7] out of range for a 4-layer model"),
    ("layers_negative", ["--set", "band=[-1]"], None, "out of range"),
    ("band_empty", ["--set", "band=[]"], None, "band is empty"),
    ("scoring_layers_empty", ["--set", "scoring.layers=[]"], None, "scoring.layers is empty"),
    ("band_not_scored", ["--set", "band=[3]"], None, "layers [3] of the band are not scored"),
    ("config_unknown_key", ["--set", "unlearn.bogus=1"], None, "bogus"),
    ("config_wrong_type", ["--set", "unlearn.steps=many"], None, "steps"),
    ("config_unknown_parameter", ["--set", "nope=1"], None, "unknown parameter(s) nope"),
    ("config_unknown_method", ["--set", "methods=[cku,magic]"], None, "unknown method 'magic'"),
    ("config_bad_method_override", ["--set", "method_overrides={cku: {lr: -1}}"], None, "method_overrides.cku: lr"),
    ("artifact_root_not_writable", ["--set", "model.spec=tiny:llama"], "artifact_root", "artifact root"),
    ("results_root_not_writable", ["--set", "model.spec=tiny:llama"], "results_root", "results root"),
]


@pytest.mark.parametrize("case,args,kind,expect", PREFLIGHT_CASES, ids=[c[0] for c in PREFLIGHT_CASES])
def test_bad_input_fails_before_anything_is_written(case: str, args: list[str], kind: str | None, expect: str,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    artifacts, results = roots()
    extra: list[str] = []
    if kind == "artifact_root":
        (tmp_path / "a-file").write_text("not a folder")
        artifacts = tmp_path / "a-file" / "artifacts"
        monkeypatch.setenv("CKU_ARTIFACT_ROOT", str(artifacts))  # restored after the test (main() sets it)
        extra = ["--artifact-root", str(artifacts)]
    elif kind == "results_root":
        (tmp_path / "r-file").write_text("not a folder")
        results = tmp_path / "r-file"
        monkeypatch.setenv("CKU_RESULTS_ROOT", str(results))
        extra = ["--results-root", str(results)]
    elif kind is not None:
        path = make_input(kind, tmp_path)
        args = [a.replace("{path}", path) for a in args]
    before = artifact_folders(artifacts), result_parts(results)
    capfd.readouterr()
    code = main([*extra, "run", *TINY, *args])
    _out, err = capfd.readouterr()
    assert_one_line_error(code, err, expect)
    assert (artifact_folders(artifacts), result_parts(results)) == before
    if results.is_dir():
        assert not any(results.rglob("*.parquet")), "a failed preflight must not create a run record"


def test_config_file_with_unknown_key(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("unlearn:\n  steps: 3\n  learning_rate: 0.1\n")
    code = main(["run", *TINY, "--config", str(config)])
    assert_one_line_error(code, capfd.readouterr().err, "learning_rate")
    assert artifact_folders(roots()[0]) == set()


def test_checkpoint_key_escaping_the_artifact_root(monkeypatch: pytest.MonkeyPatch,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """cku-evaluate takes an artifact key from the user: `../` must never leave the artifact root."""
    from flows import cli

    monkeypatch.setattr(cli, "cmd_run", lambda args: cli._run_flow("flows.evaluate", "cku_evaluate", args))
    for key in ("../../etc", "/etc/passwd", ".quarantine", "a/../../b"):
        code = cli.main(["run", "--set", "model.spec=tiny:llama", "--set", f"checkpoint={key}"])
        assert_one_line_error(code, capfd.readouterr().err, "invalid artifact key")
    assert artifact_folders(roots()[0]) == set()


# ------------------------------------------------------------------------------------------ real subprocess

def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("sql,expect", [
    ("DELETE FROM runs", "only read-only queries"),
    ("COPY (SELECT 1) TO '/tmp/cku-bad-input-leak.csv'", "only read-only queries"),
    ("SELECT 1; DROP VIEW runs", "exactly one SQL statement"),
    ("ATTACH '/tmp/cku-bad-input-leak.duckdb' AS x", "only read-only queries"),
    ("SELECT * FROM read_csv('/etc/passwd')", "query failed"),
    ("SELECT * FROM read_text('/etc/hostname')", "query failed"),
])
def test_query_refuses_writes_and_files_outside_the_results_root(sql: str, expect: str) -> None:
    proc = _cli("query", sql)
    assert_one_line_error(proc.returncode, proc.stderr, expect)
    assert proc.stdout == ""
    assert not Path("/tmp/cku-bad-input-leak.csv").exists() and not Path("/tmp/cku-bad-input-leak.duckdb").exists()


def test_real_cli_subprocess_bad_dataset_one_line(tmp_path: Path) -> None:
    path = make_input("data_latin1", tmp_path)
    proc = _cli("run", *TINY, "--set", f"data.harmful_datasets=[{path}]")
    assert_one_line_error(proc.returncode, proc.stderr, "not valid UTF-8")
    assert artifact_folders(roots()[0]) == set() and result_parts(roots()[1]) == set()


# ------------------------------------------------------------------------------------------ inside a running flow

@pytest.fixture(scope="module")
def shared_roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bad-input-flow")
    return base / "artifacts", base / "results"


@pytest.fixture
def flow_env(prefect_local: Path, shared_roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
             ) -> tuple[ArtifactStore, ResultsStore, Path]:
    monkeypatch.setenv("CKU_ARTIFACT_ROOT", str(shared_roots[0]))
    monkeypatch.setenv("CKU_RESULTS_ROOT", str(shared_roots[1]))
    return ArtifactStore(shared_roots[0]), ResultsStore(shared_roots[1]), prefect_local


def assert_failed_in_flow(code: int, err: str, expect: str, results: ResultsStore, parts_before: set[str]) -> None:
    """The run failed with our one-line error last on stderr; only failed `runs` rows were added."""
    lines = error_lines(err)
    assert code == 2, err[-3000:]
    assert lines[-1].startswith("error: ") and expect.lower() in lines[-1].lower(), lines[-3:]
    assert sum(line.startswith("error:") for line in lines) == 1
    new_parts = result_parts(results.root) - parts_before
    assert new_parts and all(p.startswith("runs/") for p in new_parts), sorted(new_parts)
    run_ids = {p.split("/")[1].removeprefix("run_id=") for p in new_parts}
    _, rows = results.query("SELECT run_id, status FROM runs")
    statuses = {rid: status for rid, status in rows if rid in run_ids}
    assert set(statuses.values()) == {"failed"}, statuses


def test_disk_full_while_writing_an_artifact(flow_env: tuple[ArtifactStore, ResultsStore, Path],
                                             monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """ENOSPC while the first stage writes: the partial artifact is removed and the run fails with one line."""
    from flows.cli import main

    store, results, _ = flow_env

    def full_disk(self: ArtifactStore, tmp: Path, *args: object) -> None:
        (tmp / "partial.bin").write_bytes(b"\0" * 1024)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ArtifactStore, "_write_manifest", full_disk)
    before = artifact_folders(store.root), result_parts(results.root)
    capfd.readouterr()
    code = main(["run", *TINY])
    err = capfd.readouterr().err
    assert_failed_in_flow(code, err, "no space left on device while writing artifact model/", results, before[1])
    assert artifact_folders(store.root) == before[0]


@pytest.fixture
def completed_tiny_run(flow_env: tuple[ArtifactStore, ResultsStore, Path]) -> tuple[ArtifactStore, ResultsStore, Path]:
    """One successful tiny CKU run in the shared roots (computed once per module)."""
    from flows.cli import main

    store = flow_env[0]
    if not store.keys("checkpoint"):
        assert main(["run", *TINY]) == 0
    return flow_env


def _swap_mask(store: ArtifactStore, prefect_storage: Path, change: Callable[[object], None]) -> Callable[[], None]:
    """Replace the stored mask by a changed one (a valid artifact with a correct manifest), and drop
    Prefect's cached result of the mask task so the run reads the artifact. Returns an undo function."""
    from cku_core.masks import RetainedSet
    from tasks.mask import MASK_FILE, STAGE, VERSION

    [key] = store.keys(STAGE)
    original = store.open(STAGE, key)
    keep = original.path.parent / f".keep-{key}"
    shutil.copytree(original.path, keep)
    retained = RetainedSet.load(original.file(MASK_FILE))
    change(retained)
    shutil.rmtree(original.path)
    store.put(STAGE, key, lambda folder: retained.save(folder / MASK_FILE), stage_version=VERSION,
              provenance=original.manifest.provenance)
    for record in prefect_storage.glob(f"cku-{STAGE}-v{VERSION}-*"):
        record.unlink()

    def undo() -> None:
        shutil.rmtree(original.path)
        os.rename(keep, original.path)
        for record in prefect_storage.glob(f"cku-{STAGE}-v{VERSION}-*"):
            record.unlink()
    return undo


def _other_model(retained: object) -> None:
    retained.metadata["model_fingerprint"] = "0" * 64  # type: ignore[attr-defined]


def _other_shape(retained: object) -> None:
    retained.locked = {layer: t[:10] for layer, t in retained.locked.items()}  # type: ignore[attr-defined]
    retained.scores = {layer: t[:10] for layer, t in retained.scores.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("change,expect", [(_other_model, "mask was computed for model 000000000000"),
                                           (_other_shape, "has 10 units but the model's MLP has 64")],
                         ids=["mask_from_another_model", "mask_with_wrong_shapes"])
def test_mask_artifact_for_another_model_is_refused(completed_tiny_run: tuple[ArtifactStore, ResultsStore, Path],
                                                    change: Callable[[object], None], expect: str,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    store, results, prefect_storage = completed_tiny_run
    undo = _swap_mask(store, prefect_storage, change)
    try:
        before = artifact_folders(store.root), result_parts(results.root)
        capfd.readouterr()
        code = main(["run", *TINY])
        err = capfd.readouterr().err
        assert_failed_in_flow(code, err, expect, results, before[1])
        assert artifact_folders(store.root) == before[0]  # no checkpoint for the refused mask, no leftovers
        assert not (store.root / "unlearn-state").exists() or not any((store.root / "unlearn-state").iterdir())
    finally:
        undo()

