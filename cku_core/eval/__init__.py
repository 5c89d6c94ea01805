"""The evaluation suite: data sources and splits, attacks x judges -> ASR, utility, result rows.

Public API (what the pipeline calls):
- `make_splits(SplitConfig) -> Splits` — seeded, disjoint forget / scoring / eval splits + digest
- `load_eval_data(splits, EvalConfig) -> EvalData`
- `compute_reference(original_model, tokenizer, data, config, knowledge=None) -> ReferenceOutputs` (save/load);
  `knowledge_references(raw_model, ...)` first when the original is an aligned model
- `evaluate_model(model, tokenizer, data, config, reference=None, judge=None, on_progress=None) -> EvalResult`
- `load_dataset(name) -> LoadedDataset`, `DATASETS`, `register_dataset` for data sources
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy exports (PEP 562): the judges import `cku_core.eval.likelihood`, and the runner imports the
# judges, so importing every submodule here would be circular.
_EXPORTS = {
    "DEFAULT_GRID": "config", "DecodingPoint": "config", "EvalConfig": "config",
    "EvalData": "data", "load_eval_data": "data",
    "ReferenceOutputs": "reference", "compare_to_reference": "reference", "compute_reference": "reference",
    "KnowledgeReferences": "reference", "knowledge_references": "reference",
    "DATASETS": "registry", "get_dataset_spec": "registry", "register_dataset": "registry",
    "MetricRow": "rows", "ResponseRow": "rows",
    "EvalResult": "runner", "evaluate_model": "runner",
    "DataRecord": "sources", "DatasetSpec": "sources", "LoadedDataset": "sources", "load_dataset": "sources",
    "SplitConfig": "splits", "Splits": "splits", "assert_disjoint": "splits", "make_splits": "splits",
    "split_records": "splits",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cku_core.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cku_core.eval.{_EXPORTS[name]}"), name)
