"""Training state of an interrupted unlearning run, without pickle: tensors in safetensors, the rest in JSON.

`cku_core.unlearn` hands `on_checkpoint` a state dict {step, params, optimizer}; the optimizer part
is `Optimizer.state_dict()`. Its tensors (AdamW: step, exp_avg, exp_avg_sq per parameter) are
flattened into named safetensors entries `optim/<index>/<name>`, the trainable tensors into
`param/<name>`; step, param_groups and any non-tensor optimizer values go to `state.json`.
Nothing random is stored: the batch schedule is a pure function of the seed
(`unlearn.batch_schedule`), so step + tensors + optimizer state determine the rest of the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cku_core.errors import CKUError

STATE_FORMAT = "cku-train-state/1"
TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"


class ResumeStateError(CKUError):
    """A saved training state cannot be used (unreadable, another format, or another parameter set)."""


def save_training_state(state: dict[str, Any], folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write `state` (from unlearn's on_checkpoint) into `folder` as state.safetensors + state.json.

    `extra` is JSON kept beside it (e.g. the step history for the final report).
    """
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {f"param/{n}": t.detach().contiguous().cpu() for n, t in state["params"].items()}
    scalars: dict[str, dict[str, Any]] = {}
    optim = state["optimizer"]
    for index, values in optim["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim/{index}/{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {"format": STATE_FORMAT, "step": int(state["step"]), "param_groups": optim["param_groups"],
            "optimizer_state_ids": sorted(int(i) for i in optim["state"]), "optimizer_scalars": scalars,
            "extra": extra or {}}
    save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": STATE_FORMAT})
    (folder / JSON_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_training_state(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state for unlearn's resume_state, extra JSON) from a folder written by save_training_state."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / JSON_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / TENSORS_FILE))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ResumeStateError(f"training state in {folder} is unreadable ({exc}); it will be ignored") from None
    if meta.get("format") != STATE_FORMAT:
        raise ResumeStateError(f"training state in {folder} has format {meta.get('format')!r}, not {STATE_FORMAT}")
    params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    optim_state: dict[int, dict[str, Any]] = {int(i): {} for i in meta["optimizer_state_ids"]}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, index, name = k.split("/", 2)
            optim_state[int(index)][name] = v
    for index, values in meta["optimizer_scalars"].items():
        optim_state[int(index)].update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    state = {"step": int(meta["step"]), "params": params, "optimizer": {"state": optim_state, "param_groups": groups}}
    return state, meta.get("extra", {})
