"""CKU and its baselines through one API.

A method is a recipe: which forget objective and regularizer, and how U is chosen. The trainable
scope, learning rate and steps come from the user's UnlearnConfig, so the methods differ only in
what the recipe says (compare them at matched forgetting by sweeping lr or steps).

| method      | objective | regularizer | U                         |
|-------------|-----------|-------------|---------------------------|
| original    | -         | -           | - (no unlearning)         |
| cku         | hinge_ga  | kl_ref      | scored, NLR from config   |
| cku_random  | hinge_ga  | kl_ref      | random, same size         |
| cku_nlr0    | hinge_ga  | kl_ref      | none locked (NLR 0)       |
| ga          | ga        | -           | none                      |
| graddiff    | ga        | retain_ce   | none                      |
| npo         | npo       | retain_ce   | none                      |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers import PreTrainedTokenizerBase

from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.data import Example, examples_digest
from cku_core.errors import ConfigError
from cku_core.fingerprint import model_fingerprint
from cku_core.masks import RetainedSet, select_retained
from cku_core.scoring import score_neurons
from cku_core.unlearn import StepCallback, UnlearnReport, unlearn


@dataclass(frozen=True)
class Method:
    name: str
    objective: str | None            # None = no unlearning
    regularizer: str | None = None
    mask: Literal["scored", "random", "none"] = "none"
    nlr: float | None = None          # overrides MaskConfig.nlr when set
    uses_config_objective: bool = False  # cku follows the user's objective/regularizer choice


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("original", None),
    Method("cku", "hinge_ga", "kl_ref", "scored", uses_config_objective=True),
    Method("cku_random", "hinge_ga", "kl_ref", "random", uses_config_objective=True),
    Method("cku_nlr0", "hinge_ga", "kl_ref", "scored", nlr=0.0, uses_config_objective=True),
    Method("ga", "ga"),
    Method("graddiff", "ga", "retain_ce"),
    Method("npo", "npo", "retain_ce"),
]}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def method_configs(name: str, unlearn_cfg: UnlearnConfig, scoring_cfg: ScoringConfig, mask_cfg: MaskConfig
                   ) -> tuple[UnlearnConfig | None, ScoringConfig | None, MaskConfig | None]:
    """The stage configs a method runs with (None = that stage is skipped)."""
    method = get_method(name)
    if method.objective is None:
        return None, None, None
    if method.uses_config_objective:
        u = unlearn_cfg
    else:
        u = unlearn_cfg.model_copy(update={"objective": method.objective, "regularizer": method.regularizer})
    if method.mask == "none":
        return u, None, None
    s = scoring_cfg if method.mask == "scored" else scoring_cfg.model_copy(update={"scorer": "random"})
    m = mask_cfg if method.nlr is None else mask_cfg.model_copy(update={"nlr": method.nlr})
    return u, s, m


def build_mask(model: nn.Module, tokenizer: PreTrainedTokenizerBase, useful: Sequence[Example],
               scoring_cfg: ScoringConfig, mask_cfg: MaskConfig, fingerprint: str | None = None) -> RetainedSet:
    """Score on useful data and keep the top NLR fraction, with full provenance metadata."""
    scores = score_neurons(model, tokenizer, useful, scoring_cfg)
    meta = {
        "model_fingerprint": fingerprint or model_fingerprint(model),
        "model_type": model.config.model_type,
        "d_ff": str(next(iter(scores.values())).numel()),
        "scorer": scoring_cfg.scorer,
        "scoring_config": scoring_cfg.canonical_json(),
        "data_digest": examples_digest(useful),
    }
    return select_retained(scores, mask_cfg.nlr, metadata=meta)


def run_method(name: str, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, forget: Sequence[Example],
               retain: Sequence[Example], useful: Sequence[Example], unlearn_cfg: UnlearnConfig,
               scoring_cfg: ScoringConfig | None = None, mask_cfg: MaskConfig | None = None,
               on_step: StepCallback | None = None) -> tuple[UnlearnReport | None, RetainedSet | None]:
    """Run one method end to end on `model` (in place). `useful` scores neurons; `retain` regularizes."""
    scoring_cfg, mask_cfg = scoring_cfg or ScoringConfig(), mask_cfg or MaskConfig()
    u, s, m = method_configs(name, unlearn_cfg, scoring_cfg, mask_cfg)
    if u is None:
        return None, None
    mask = build_mask(model, tokenizer, useful, s, m) if s is not None else None
    report = unlearn(model, tokenizer, forget, retain, u, mask=mask, layers=scoring_cfg.layers, on_step=on_step)
    return report, mask
