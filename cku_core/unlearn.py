"""Masked unlearning: loss = harm + beta * reg, with the retained set's gradients pruned.

What keeps the locked units exact:
  1. their gradient entries are zeroed before every optimizer step (index ops on the few
     rows/columns involved, not a full-size multiply), so AdamW's moments stay exactly zero there;
  2. tensors that hold locked entries get weight_decay 0 (decoupled decay would move them);
  3. weights are never cast: autocast computes in bf16 on CUDA but stores nothing in it.
`verify_invariant` then checks bit-for-bit, at the end of every run, that locked entries and frozen
parameters equal the original and that trainable entries moved.

The original model needed by kl_ref / npo is not a second model: only the trainable tensors can
differ from it, so their original values are kept and swapped in for a no-grad reference pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from cku_core.adapters import MLPAdapter
from cku_core.config import UnlearnConfig
from cku_core.data import Example, collate, encode_examples, pad_id
from cku_core.device import autocast, resolve_device, to_device
from cku_core.errors import DataError, InvariantError
from cku_core.fingerprint import update_with_tensor
from cku_core.losses import reference_tokens, sequence_nll
from cku_core.masks import RetainedSet
from cku_core.objectives import OBJECTIVES, REGULARIZERS, ForgetOutputs
from cku_core.scoring import resolve_layers


@dataclass(frozen=True)
class StepStats:
    step: int
    total_steps: int
    loss: float
    harm: float
    reg: float
    forget_nll: float
    seconds: float


@dataclass
class UnlearnReport:
    steps: int
    seconds: float
    stopped_early: bool
    n_trainable: int               # trainable entries (locked ones excluded)
    n_locked: int                  # locked entries inside trainable tensors
    n_changed: int                 # entries that differ from the original at the end
    history: list[StepStats] = field(default_factory=list)
    trainable_names: list[str] = field(default_factory=list)   # the only tensors that may differ

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LockedSlice:
    """The locked entries of one trainable tensor: indices `index` along `dim`.

    `keep` is the same set as a small 0/1 vector shaped to broadcast along `dim` (d_ff entries, not
    a full-size mask): multiplying by it is one streaming pass, whereas index_fill_/masked_fill_
    on CPU take 5-50x longer and stall badly when the two OpenMP threads compete with other work.
    """

    name: str
    param: nn.Parameter
    dim: int
    index: torch.Tensor
    keep: torch.Tensor


def keep_vector(param: nn.Parameter, dim: int, index: torch.Tensor) -> torch.Tensor:
    """1 for trainable entries, 0 for locked ones along `dim`, broadcastable to `param`."""
    keep = torch.ones(param.shape[dim], dtype=param.dtype, device=param.device)
    keep[index.to(param.device)] = 0
    shape = [1] * param.dim()
    shape[dim] = -1
    return keep.view(shape)


# --- scope and locks -----------------------------------------------------------------------------

def trainable_parameters(model: nn.Module, adapter: MLPAdapter, layers: Sequence[int], scope: str) -> dict[str, nn.Parameter]:
    """The parameters that may change: selected MLPs, every MLP, or the whole model."""
    named = dict(model.named_parameters())
    if scope == "full":
        return named
    chosen = layers if scope == "selected_mlp" else range(adapter.num_layers)
    return {name: named[name] for layer in chosen for name in adapter.mlp_param_names(layer)}


def locked_slices(adapter: MLPAdapter, mask: RetainedSet | None, trainable: dict[str, nn.Parameter]) -> list[LockedSlice]:
    """Every trainable tensor's locked rows/columns according to U."""
    if mask is None:
        return []
    slices = []
    for layer in mask.layers:
        units = mask.locked_units(layer)
        if units.numel() == 0:
            continue
        for up in adapter.unit_params(layer):
            if up.name in trainable:
                index = up.unit_index(units)
                slices.append(LockedSlice(up.name, up.param, up.spec.dim, index, keep_vector(up.param, up.spec.dim, index)))
    return slices


def prune_gradients(slices: Sequence[LockedSlice]) -> None:
    """Zero the gradient entries of the locked units (called before every optimizer step).

    x * 0 is +-0 for every finite gradient, so AdamW's update of a locked entry stays exactly 0
    (`verify_invariant` checks it bit for bit after every run).
    """
    for s in slices:
        if s.param.grad is not None:
            s.param.grad.mul_(s.keep)


class OriginalWeights:
    """Original values of the trainable tensors, in their own dtype: the reference model and the
    ground truth of the invariant. Memory is the trainable scope only, not a second model."""

    def __init__(self, trainable: dict[str, nn.Parameter]) -> None:
        self.params = trainable
        self.values = {name: p.detach().clone() for name, p in trainable.items()}

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Run the model as the original (no grad): swap tensor storage, then swap back."""
        current = {name: p.data for name, p in self.params.items()}
        try:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.data = self.values[name]
                yield
        finally:
            for name, p in self.params.items():
                p.data = current[name]


def frozen_digests(model: nn.Module, trainable: dict[str, nn.Parameter]) -> dict[str, str]:
    trainable_ids = {id(p) for p in trainable.values()}
    digests = {}
    for name, p in model.named_parameters():
        if id(p) in trainable_ids:
            continue
        h = hashlib.sha256()
        update_with_tensor(h, name, p)
        digests[name] = h.hexdigest()
    return digests


def verify_invariant(model: nn.Module, original: OriginalWeights, slices: Sequence[LockedSlice],
                     frozen_before: dict[str, str], require_change: bool) -> tuple[int, int]:
    """Raise InvariantError unless locked and frozen entries are bit-identical and something moved.

    Returns (entries changed, locked entries checked).
    """
    moved_locked = [
        s.name for s in slices
        if not torch.equal(s.param.detach().index_select(s.dim, s.index),
                           original.values[s.name].index_select(s.dim, s.index))
    ]
    if moved_locked:
        raise InvariantError(
            f"locked units moved during unlearning in {moved_locked[:3]}; this is a bug in gradient pruning, "
            "please report it with the config"
        )
    frozen_after = frozen_digests(model, original.params)
    moved_frozen = [name for name, d in frozen_before.items() if frozen_after.get(name) != d]
    if moved_frozen:
        raise InvariantError(f"frozen parameters changed during unlearning: {moved_frozen[:3]}; please report it with the config")
    n_changed = sum(int((p.detach() != original.values[n]).sum()) for n, p in original.params.items())
    if require_change and n_changed == 0:
        raise InvariantError(
            "unlearning changed no trainable weight; raise lr or steps, lower NLR, or check that the forget "
            "loss is not already satisfied (hinge_ga stops once NLL > lambda)"
        )
    n_locked = sum(s.index.numel() * s.param.numel() // s.param.shape[s.dim] for s in slices)
    return n_changed, n_locked


# --- batches -------------------------------------------------------------------------------------

def batch_schedule(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index lists for `steps` batches: seeded permutations, one per epoch, cycled as needed.

    Deterministic from (n, batch_size, steps, seed) alone, so a resumed run replays the same batches.
    """
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += torch.randperm(n_examples, generator=generator).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def total_steps(config: UnlearnConfig, n_forget: int) -> int:
    return config.steps or config.epochs * math.ceil(n_forget / config.batch_size)


# --- the loop ------------------------------------------------------------------------------------

StepCallback = Callable[[StepStats], None]
CheckpointFn = Callable[[dict], None]


def unlearn(model: nn.Module, tokenizer: PreTrainedTokenizerBase, forget: Sequence[Example],
            retain: Sequence[Example], config: UnlearnConfig, *, mask: RetainedSet | None = None,
            layers: Sequence[int] | None = None, on_step: StepCallback | None = None,
            checkpoint_every: int | None = None, on_checkpoint: CheckpointFn | None = None,
            resume_state: dict | None = None, max_seconds: float | None = None) -> UnlearnReport:
    """Unlearn `forget` from `model` in place; returns a report. See the module docstring.

    `layers` is the selected band when no mask is given (e.g. GA with scope selected_mlp); with a
    mask the band is the mask's layers. `resume_state` is a state dict written by `on_checkpoint`.
    """
    if not forget:
        raise DataError("the forget set is empty; give at least one harmful prompt/response pair")
    objective = OBJECTIVES[config.objective]
    regularizer = REGULARIZERS[config.regularizer] if config.regularizer else None
    if regularizer and not retain:
        raise DataError(f"regularizer '{config.regularizer}' needs useful (retain) examples, but none were given")

    device = resolve_device(config.device)
    model.to(device)
    adapter = MLPAdapter(model)
    band = mask.layers if mask is not None and mask.layers else resolve_layers(adapter, layers)
    trainable = trainable_parameters(model, adapter, band, config.scope)
    slices = locked_slices(adapter, mask, trainable)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable.values():
        p.requires_grad_(True)
    original = OriginalWeights(trainable)
    frozen_before = frozen_digests(model, trainable)
    optimizer = _optimizer(trainable, slices, config)

    n_steps = total_steps(config, len(forget))
    pad = pad_id(tokenizer)
    forget_enc = encode_examples(tokenizer, forget, config.max_length)
    retain_enc = encode_examples(tokenizer, retain, config.max_length) if regularizer else []
    forget_plan = batch_schedule(len(forget_enc), config.batch_size, n_steps, config.seed)
    retain_plan = batch_schedule(len(retain_enc), config.batch_size, n_steps, config.seed + 1) if retain_enc else []

    start = 0
    if resume_state is not None:
        start = _restore(resume_state, trainable, optimizer)
    # Eval mode: dropout off, so the policy and reference passes are deterministic and comparable.
    # Hugging Face checkpointing only runs in train mode, so turning it on also turns dropout on.
    model.eval()
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    t0 = time.perf_counter()
    history: list[StepStats] = []
    stopped_early = False
    try:
        for step in range(start, n_steps):
            forget_batch = to_device(collate([forget_enc[i] for i in forget_plan[step]], pad), device)
            retain_batch = to_device(collate([retain_enc[i] for i in retain_plan[step]], pad), device) if retain_plan else None
            stats = _step(model, forget_batch, retain_batch, objective, regularizer, original, config, device)
            prune_gradients(slices)
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = StepStats(step + 1, n_steps, *stats, seconds=time.perf_counter() - t0)
            history.append(record)
            if on_step:
                on_step(record)
            if on_checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < n_steps:
                on_checkpoint(_state(step + 1, trainable, optimizer))
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds and step + 1 < n_steps:
                stopped_early = True
                break
    finally:
        model.eval()
        if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
            model.gradient_checkpointing_disable()
        for p in model.parameters():
            p.requires_grad_(False)

    n_changed, n_locked = verify_invariant(model, original, slices, frozen_before, config.require_change)
    n_trainable = sum(p.numel() for p in trainable.values()) - n_locked
    return UnlearnReport(len(history) + start, time.perf_counter() - t0, stopped_early, n_trainable, n_locked,
                         n_changed, history, sorted(trainable))


def _optimizer(trainable: dict[str, nn.Parameter], slices: Sequence[LockedSlice], config: UnlearnConfig) -> torch.optim.Optimizer:
    with_locks = {s.name for s in slices}
    groups = [
        {"params": [p for n, p in trainable.items() if n in with_locks], "weight_decay": 0.0},
        {"params": [p for n, p in trainable.items() if n not in with_locks], "weight_decay": config.weight_decay},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def _step(model: nn.Module, forget: dict, retain: dict | None, objective, regularizer, original: OriginalWeights,
          config: UnlearnConfig, device: torch.device) -> tuple[float, float, float, float]:
    """Forward/backward of one step; returns (loss, harm, reg, forget NLL). Harm and reg are
    back-propagated one after the other so their logits are never in memory together."""
    inputs = lambda b: {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}  # noqa: E731
    ref_nll_sum = ref_tokens = None
    if objective.needs_reference or (regularizer and regularizer.needs_reference):
        with original.swapped_in(), autocast(device, config.precision):
            if objective.needs_reference:
                ref_nll_sum = sequence_nll(model(**inputs(forget)).logits, forget["labels"])[1]
            if regularizer and regularizer.needs_reference:
                # Reduced at once: the full reference logits never stay in memory next to the policy's.
                ref_tokens = reference_tokens(model(**inputs(retain)).logits, retain["labels"])
    with autocast(device, config.precision):
        nll_mean, nll_sum = sequence_nll(model(**inputs(forget)).logits, forget["labels"])
    harm = objective.fn(ForgetOutputs(nll_mean, nll_sum, ref_nll_sum),
                        hinge_lambda=config.hinge_lambda, npo_beta=config.npo_beta)
    if harm.requires_grad:
        harm.backward()
    reg_value = 0.0
    if regularizer:
        with autocast(device, config.precision):
            logits = model(**inputs(retain)).logits
        reg = regularizer.fn(logits, retain["labels"], ref_tokens)
        (config.beta * reg).backward()
        reg_value = float(reg.detach())
    harm_value = float(harm.detach())
    return harm_value + config.beta * reg_value, harm_value, reg_value, float(nll_mean.detach().mean())


def _state(step: int, trainable: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer) -> dict:
    return {
        "step": step,
        "params": {n: p.detach().clone() for n, p in trainable.items()},
        "optimizer": optimizer.state_dict(),
    }


def _restore(state: dict, trainable: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    """Load a state written by `_state`; checked before anything is copied, so a refusal leaves the model as it was."""
    from cku_core.resume import ResumeStateError

    saved = state["params"]
    wrong = sorted(set(saved) ^ set(trainable)) or [
        n for n, p in trainable.items() if saved[n].shape != p.shape or saved[n].dtype != p.dtype]
    if wrong:
        raise ResumeStateError(f"the saved training state does not fit this run's trainable tensors ({wrong[:3]}); "
                               "it was written for another model, scope or mask")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
