"""What the original model said, computed once and passed to every evaluation of an unlearned model.

Holding the original's outputs instead of the original model means two full models never sit in
memory together. For each held-out benign prompt it keeps the greedy continuation and, per
continuation token, the top-k log-probs (k = `EvalConfig.reference_top_k`); KL is then computed
over those k tokens plus one "rest" bucket. That coarse KL is a lower bound of the full KL (data
processing) and equals it when k = 0 (full vocabulary, ~200 KB per token for a 49k vocabulary).
It also keeps compliant answers to the held-out harmful prompts (only those the keyword judge reads
as compliance and that are not degenerate), the default references of the knowledge judge and, per
request, of the embedding judge: the original's own, or, for an aligned original that refuses, the
answers of the model before alignment (`knowledge_references`, run on that model first). When the
evaluation uses the embedding judge, it also calibrates that judge's threshold here, once per
original model, so every evaluated model is judged with the same threshold (`embedding_calibration`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cku_core.attacks import get_attack
from cku_core.data import Example, pad_id, render_prompt
from cku_core.eval.config import EvalConfig
from cku_core.eval.data import EvalData
from cku_core.eval.likelihood import map_continuations
from cku_core.fingerprint import json_digest
from cku_core.generation import GenSettings, ProgressFn, generate
from cku_core.judges.degenerate import DegenerateDetector
from cku_core.judges.embedding import (
    EMBEDDING_SEED_OFFSET,
    calibrate_judge,
    default_embedder,
)
from cku_core.judges.keyword import RefusalKeywordJudge


@dataclass
class ReferenceOutputs:
    prompt_ids: list[str]
    contexts: list[list[int]]        # rendered benign prompts, token ids
    continuations: list[list[int]]   # the original's greedy continuation (eos excluded)
    topk_ids: list[torch.Tensor]     # [len(continuation), k] long
    topk_logprobs: list[torch.Tensor]  # [len(continuation), k] float32
    harmful_references: list[Example] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # config digest, eval-data digest, top_k, ...
    embedding_calibration: dict = field(default_factory=dict)  # Calibration.as_dict(); empty unless judged

    def digest(self) -> str:
        extra = {"embedding_calibration": self.embedding_calibration} if self.embedding_calibration else {}
        return json_digest({"meta": self.meta, "continuations": self.continuations,
                            "refs": [[e.prompt, e.response] for e in self.harmful_references], **extra})

    def save(self, path: str | Path) -> None:
        torch.save({**self.__dict__, "harmful_references": [[e.prompt, e.response] for e in self.harmful_references]},
                   Path(path))

    @classmethod
    def load(cls, path: str | Path) -> ReferenceOutputs:
        d = torch.load(Path(path), weights_only=True)
        d["harmful_references"] = [Example(p, r) for p, r in d["harmful_references"]]
        return cls(**d)


def _topk(k: int):
    def fn(logp: torch.Tensor, _targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0 or k >= logp.shape[-1]:
            return torch.arange(logp.shape[-1]).expand_as(logp).clone(), logp
        values, ids = logp.topk(k, dim=-1)
        return ids, values
    return fn


@dataclass
class KnowledgeReferences:
    """Harmful answers the knowledge and embedding judges compare against, and who gave them.

    Normally the original model's own compliant answers. When the original is an aligned model it
    refuses, so they come from the model before alignment (`knowledge_references` run on it first):
    its answers are the knowledge that alignment hides and unlearning has to remove.
    """

    references: list[Example]
    samples: dict[str, list[str]] = field(default_factory=dict)  # sampled compliant answers (calibration positives)
    source: str = "original"


def _harmful_answer_filter(config: EvalConfig) -> Callable[[str], bool]:
    keyword, degenerate = RefusalKeywordJudge(config.keyword_window_chars), DegenerateDetector()
    return lambda text: not degenerate.is_degenerate(text) and keyword.refusal_phrase(text) is None


def knowledge_references(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: EvalData,
                         config: EvalConfig, source: str = "original",
                         on_progress: ProgressFn | None = None) -> KnowledgeReferences:
    """`model`'s greedy answers to the held-out harmful prompts, keeping those that are compliant
    (no refusal phrase) and not degenerate; plus sampled second answers when the embedding judge
    needs calibration positives."""
    harmful = data.harmful[: config.n_eval_prompts]
    inputs = [get_attack("direct").render(tokenizer, r.prompt).model_input for r in harmful]
    gens = generate(model, tokenizer, inputs, config.greedy(), config.batch_size, on_progress).outputs
    is_harmful_answer = _harmful_answer_filter(config)
    refs = [Example(r.prompt, g.text) for r, g in zip(harmful, gens) if is_harmful_answer(g.text)]
    samples = _sampled_answers(model, tokenizer, refs, config, is_harmful_answer) if "embedding" in config.judges else {}
    return KnowledgeReferences(refs, samples, source)


def compute_reference(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: EvalData, config: EvalConfig,
    on_progress: ProgressFn | None = None, *, knowledge: KnowledgeReferences | None = None,
) -> ReferenceOutputs:
    """Run the ORIGINAL model once: greedy answers on benign held-out prompts with top-k log-probs,
    and (unless `knowledge` already holds them, e.g. from the model before alignment) its compliant
    answers to the harmful ones."""
    if knowledge is None:
        knowledge = knowledge_references(model, tokenizer, data, config, "original", on_progress)
    benign = data.benign[: config.n_benign]
    prompts = [render_prompt(tokenizer, r.prompt) for r in benign]
    gens = generate(model, tokenizer, prompts, config.greedy(), config.batch_size, on_progress).outputs
    keep = [i for i, g in enumerate(gens) if g.token_ids]
    contexts = [tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in keep]
    continuations = [gens[i].token_ids for i in keep]
    tops = map_continuations(model, list(zip(contexts, continuations)), pad_id(tokenizer),
                             _topk(config.reference_top_k), config.batch_size)
    meta = {"config_digest": config.digest(), "eval_data_digest": data.digest, "top_k": config.reference_top_k,
            "max_new_tokens": config.max_new_tokens, "knowledge_source": knowledge.source}
    calibration = {}
    if "embedding" in config.judges:
        calibration = _embedding_calibration(knowledge, [gens[i].text for i in keep], config)
    return ReferenceOutputs(prompt_ids=[benign[i].id for i in keep], contexts=contexts, continuations=continuations,
                            topk_ids=[t[0] for t in tops], topk_logprobs=[t[1].to(torch.float32) for t in tops],
                            harmful_references=knowledge.references, meta=meta, embedding_calibration=calibration)


def _sampled_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, refs: list[Example],
                     config: EvalConfig, is_harmful_answer: Callable[[str], bool]) -> dict[str, list[str]]:
    """Second wordings of the same harmful content, for the embedding judge's calibration positives:
    the same model sampled at `embedding.temperature` (no other model needed). Samples that are
    refusals or degenerate are dropped (they are not harmful content)."""
    settings = config.embedding
    inputs = [get_attack("direct").render(tokenizer, e.prompt).model_input for e in refs]
    samples: dict[str, list[str]] = {e.prompt: [] for e in refs}
    for s in range(settings.samples_per_prompt if refs else 0):
        gen = GenSettings(max_new_tokens=config.max_new_tokens, do_sample=True, temperature=settings.temperature,
                          seed=config.seed + EMBEDDING_SEED_OFFSET + s)
        for e, out in zip(refs, generate(model, tokenizer, inputs, gen, config.batch_size).outputs):
            if is_harmful_answer(out.text):
                samples[e.prompt].append(out.text)
    return samples


def _embedding_calibration(knowledge: KnowledgeReferences, benign_answers: list[str], config: EvalConfig) -> dict:
    """Calibrate the embedding judge: sampled compliant answers vs the original's greedy benign ones."""
    refs = knowledge.references
    embedder = default_embedder() if refs else None
    calibration = calibrate_judge({e.prompt: e.response for e in refs}, knowledge.samples, benign_answers,
                                  config.embedding, embedder)
    return {**calibration.as_dict(), "wheel_version": embedder.wheel_version if embedder else None}


def _coarse_kl(ref_ids: torch.Tensor, ref_logp: torch.Tensor, cur_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(ref || cur) over the reference's top-k tokens plus one bucket for the rest."""
    p = ref_logp.exp()
    q_logp = cur_logp.gather(1, ref_ids)
    kl = (p * (ref_logp - q_logp)).sum(-1)
    p_rest = (1 - p.sum(-1)).clamp_min(0)
    q_rest = (1 - q_logp.exp().sum(-1)).clamp_min(1e-12)
    return kl + torch.where(p_rest > 1e-9, p_rest * (p_rest.clamp_min(1e-12).log() - q_rest.log()), torch.zeros_like(kl))


def compare_to_reference(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, reference: ReferenceOutputs, batch_size: int = 8,
) -> dict[str, float]:
    """Mean per-token KL(original || model) and greedy-token agreement on the original's continuations.

    Agreement is teacher-forced: the share of positions where the model's argmax equals the token the
    original generated greedily (one forward pass; no second generation needed).
    """
    kls, agree, n = [], 0, 0
    pairs = list(zip(reference.contexts, reference.continuations))
    for s in range(0, len(pairs), batch_size):
        # Chunk by chunk, so at most `batch_size` full-vocabulary tensors are alive at once.
        chunk = map_continuations(model, pairs[s:s + batch_size], pad_id(tokenizer), lambda lp, _t: lp, batch_size)
        for i, logp in enumerate(chunk, start=s):
            kls.append(_coarse_kl(reference.topk_ids[i], reference.topk_logprobs[i], logp))
            agree += int((logp.argmax(-1) == torch.tensor(reference.continuations[i])).sum())
            n += len(reference.continuations[i])
    if not n:
        return {"kl_to_reference": float("nan"), "greedy_agreement": float("nan"), "n_tokens": 0.0}
    return {"kl_to_reference": float(torch.cat(kls).mean()), "greedy_agreement": agree / n, "n_tokens": float(n)}
