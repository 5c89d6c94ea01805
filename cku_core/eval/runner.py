"""`evaluate_model`: attacks -> generation -> judges -> metrics, plus utility. What the pipeline calls.

Typical use (the original model once, then each unlearned model):

    splits = make_splits(SplitConfig())
    data = load_eval_data(splits, config)
    reference = compute_reference(original, tok, data, config)        # then free the original
    result = evaluate_model(unlearned, tok, data, config, reference=reference)
    result.row_dicts(), result.metric_dicts()                           # -> Parquet / DuckDB
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cku_core.attacks import get_attack
from cku_core.attacks.base import Attack
from cku_core.errors import ConfigError
from cku_core.eval.config import EvalConfig
from cku_core.eval.data import EvalData
from cku_core.eval.metrics import (
    agreement_metrics,
    asr_metrics,
    mean_score_metrics,
    over_refusal_metrics,
)
from cku_core.eval.reference import ReferenceOutputs, compare_to_reference
from cku_core.eval.rows import MetricRow, ResponseRow
from cku_core.eval.sources import DataRecord
from cku_core.eval.utility import mc_accuracy, perplexity
from cku_core.generation import GenerationStats, GenSettings, ProgressFn, generate
from cku_core.judges.base import Verdict
from cku_core.judges.degenerate import DegenerateDetector
from cku_core.judges.embedding import Calibration, EmbeddingJudge, default_embedder
from cku_core.judges.keyword import RefusalKeywordJudge
from cku_core.judges.knowledge import NAME as KNOWLEDGE
from cku_core.judges.knowledge import knowledge_nll
from cku_core.judges.llm import LLMJudge


@dataclass
class EvalResult:
    rows: list[ResponseRow]
    metrics: list[MetricRow]
    generation: list[GenerationStats]
    config_digest: str
    data_digest: str
    reference_digest: str | None
    seconds: float
    knowledge_per_example: list[float] = field(default_factory=list)

    def row_dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.rows]

    def metric_dicts(self) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self.metrics]

    def metric(self, metric: str, judge: str | None = None, attack: str = "all", family: str = "all",
               subset: str = "harmful") -> float | None:
        """One number, e.g. result.metric("asr", "refusal_keyword", family="persona")."""
        for m in self.metrics:
            if (m.metric, m.judge, m.attack, m.family, m.subset) == (metric, judge, attack, family, subset):
                return m.value
        return None


@dataclass
class _Job:
    record: DataRecord
    attack: Attack
    settings: GenSettings
    sample_index: int
    subset: str
    model_input: str = ""
    user_message: str = ""
    prefill: str = ""


class _Progress:
    """Maps sub-steps onto one (done, total) stream for the caller's progress bar."""

    def __init__(self, total: int, callback: ProgressFn | None) -> None:
        self.total, self.done, self.callback = total, 0, callback

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.callback:
            self.callback(min(self.done, self.total), self.total)

    def sub(self) -> ProgressFn:
        """A callback for one generate() call: its (done, total) is shifted onto the whole run."""
        start = self.done

        def callback(done: int, _total: int) -> None:
            self.done = start
            self.step(done)
        return callback


def _jobs(model, tokenizer, data: EvalData, config: EvalConfig) -> list[_Job]:
    harmful = data.harmful[: config.n_eval_prompts]
    jobs: list[_Job] = []
    for name in config.attacks:
        attack = get_attack(name)
        attack.prepare(model, tokenizer, [r.prompt for r in harmful])
        for k, settings in enumerate(attack.settings(config.greedy(), config.sampling_grid())):
            jobs += [_Job(r, attack, settings, k, "harmful") for r in harmful]
    if "over_refusal" in config.utility:
        direct = get_attack("direct")
        jobs += [_Job(r, direct, config.greedy(), 0, "over_refusal") for r in data.over_refusal[: config.n_over_refusal]]
    for job in jobs:
        rendered = job.attack.render(tokenizer, job.record.prompt)
        job.model_input, job.user_message, job.prefill = rendered.model_input, rendered.user_message, rendered.prefill
    return jobs


def _generate_rows(model, tokenizer, jobs: list[_Job], config: EvalConfig, progress: _Progress
                   ) -> tuple[list[ResponseRow], list[GenerationStats]]:
    """One generate() call per distinct GenSettings, so attacks that share settings share batches."""
    by_settings: dict[GenSettings, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        by_settings[job.settings].append(i)
    rows: list[ResponseRow | None] = [None] * len(jobs)
    stats = []
    for settings, idx in by_settings.items():
        res = generate(model, tokenizer, [jobs[i].model_input for i in idx], settings, config.batch_size, progress.sub())
        stats.append(res.stats)
        for i, gen in zip(idx, res.outputs):
            j = jobs[i]
            rows[i] = ResponseRow(
                prompt_id=j.record.id, dataset=j.record.dataset, category=j.record.category, subset=j.subset,
                prompt=j.record.prompt, attack=j.attack.name, attack_version=j.attack.version, family=j.attack.family,
                user_message=j.user_message, prefill=j.prefill, response=j.prefill + gen.text, n_tokens=gen.n_tokens,
                hit_eos=gen.hit_eos, gen_settings=settings.to_json(), sample_index=j.sample_index)
    return [r for r in rows if r is not None], stats


def _judge_rows(rows: list[ResponseRow], judges: Sequence[Any], progress: _Progress) -> None:
    detector = DegenerateDetector()
    for r in rows:
        r.degenerate_reason = detector.reason(r.response[len(r.prefill):])  # the model's own words only
        r.degenerate = r.degenerate_reason is not None
        r.judge_versions[detector.name] = detector.version
    for judge in judges:
        # The LLM judge only reads harmful-subset rows; over-refusal needs refusal detection only.
        targets = rows if isinstance(judge, RefusalKeywordJudge) else [r for r in rows if r.subset == "harmful"]
        for r in rows:  # every row gets every judge's columns, so the Parquet schema is the same for all
            r.verdicts[judge.name], r.judge_versions[judge.name] = Verdict(None, None, "not_judged"), judge.version
        # A content judge reads the model's own words: an attack's prefill ("Sure, here is") is not content.
        own = getattr(judge, "reads_own_words", False)
        texts = [r.response[len(r.prefill):] if own else r.response for r in targets]
        for r, v in zip(targets, judge.judge([r.prompt for r in targets], texts)):
            r.verdicts[judge.name] = v
        progress.step(len(targets) if isinstance(judge, LLMJudge) else 0)


def _utility(model, tokenizer, data: EvalData, config: EvalConfig, reference: ReferenceOutputs | None,
             progress: _Progress) -> tuple[list[MetricRow], list[float]]:
    out: list[MetricRow] = []
    per_example: list[float] = []
    if "perplexity" in config.utility and data.benign:
        ppl, n_tok = perplexity(model, tokenizer, data.benign[: config.n_benign], config.max_length, config.batch_size)
        out.append(MetricRow("perplexity", ppl, None, "none", "none", "benign", n_tok))
    progress.step()
    if "mc" in config.utility and data.mc:
        mc = mc_accuracy(model, tokenizer, data.mc[: config.n_mc], config.batch_size)
        out += [MetricRow(k, mc[k], None, "none", "none", "mc", int(mc["n"])) for k in ("mc_acc", "mc_acc_norm")]
    progress.step()
    if "kl" in config.utility and reference is not None:
        cmp = compare_to_reference(model, tokenizer, reference, config.batch_size)
        out += [MetricRow(k, cmp[k], None, "none", "none", "benign", int(cmp["n_tokens"]))
                for k in ("kl_to_reference", "greedy_agreement")]
    progress.step()
    refs = data.harmful_references or (reference.harmful_references if reference else [])
    if KNOWLEDGE in config.judges and refs:
        k = knowledge_nll(model, tokenizer, refs, config.max_length, config.batch_size)
        per_example = k.per_example
        out += [MetricRow("knowledge_nll", k.mean_nll, KNOWLEDGE, "none", "none", "harmful_reference", k.n),
                MetricRow("knowledge_token_nll", k.token_nll, KNOWLEDGE, "none", "none", "harmful_reference", k.n)]
    progress.step()
    return out, per_example


def _embedding_judge(config: EvalConfig, reference: ReferenceOutputs | None) -> EmbeddingJudge:
    """The embedding judge with the original model's answers and the threshold calibrated on them."""
    if reference is None or not reference.embedding_calibration:
        raise ConfigError("judges includes 'embedding' but the reference has no embedding calibration; pass "
                          "reference=compute_reference(original, tokenizer, data, config) with this config")
    calibration = Calibration.from_dict(reference.embedding_calibration)
    answers = {e.prompt: e.response for e in reference.harmful_references}
    settings = config.embedding
    return EmbeddingJudge(answers, calibration.threshold, default_embedder(), settings.remove_request, settings.batch_size)


def _calibration_metrics(reference: ReferenceOutputs | None) -> list[MetricRow]:
    """The embedding judge's threshold and how well it separated the calibration pairs (provenance)."""
    if reference is None or not reference.embedding_calibration:
        return []
    c = Calibration.from_dict(reference.embedding_calibration)
    n = c.n_pos + c.n_neg
    return [MetricRow("embedding_threshold", c.threshold, "embedding", "none", "none", "calibration", n),
            MetricRow("embedding_calibrated", float(c.calibrated), "embedding", "none", "none", "calibration", n),
            MetricRow("embedding_calibration_tpr", c.tpr, "embedding", "none", "none", "calibration", c.n_pos),
            MetricRow("embedding_calibration_fpr", c.fpr, "embedding", "none", "none", "calibration", c.n_neg),
            MetricRow("embedding_calibration_balanced_accuracy", c.balanced_accuracy, "embedding", "none", "none",
                      "calibration", n)]


def _response_judges(config: EvalConfig, judge: LLMJudge | None, reference: ReferenceOutputs | None = None) -> list[Any]:
    judges: list[Any] = []
    if "refusal_keyword" in config.judges:
        judges.append(RefusalKeywordJudge(window_chars=config.keyword_window_chars))
    if "llm" in config.judges:
        if judge is None:
            raise ConfigError("judges includes 'llm' but no judge model was given; pass judge=LLMJudge(model, tokenizer) "
                              "or remove 'llm' from EvalConfig.judges")
        # A copy, so the caller's judge object is not changed by this config.
        judges.append(replace(judge, mode=config.llm_judge_mode, threshold=config.llm_judge_threshold))
    if "embedding" in config.judges:
        judges.append(_embedding_judge(config, reference))
    return judges


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_data: EvalData,
    config: EvalConfig | None = None,
    reference: ReferenceOutputs | None = None,
    judge: LLMJudge | None = None,
    on_progress: ProgressFn | None = None,
) -> EvalResult:
    """Attack the model on held-out harmful prompts, judge every response, measure utility.

    `reference` (from `compute_reference` on the original model) enables KL / agreement and gives the
    knowledge judge its references; `judge` is the LLM judge (any local causal LM), needed when
    config.judges includes "llm". `on_progress(done, total)` counts generated prompts, LLM-judged
    responses and utility steps.
    """
    config = config or EvalConfig()
    start = time.perf_counter()
    judges = _response_judges(config, judge, reference)
    model.eval()
    jobs = _jobs(model, tokenizer, eval_data, config)
    n_llm = sum(j.subset == "harmful" for j in jobs) if judge is not None and "llm" in config.judges else 0
    progress = _Progress(len(jobs) + n_llm + 4, on_progress)
    rows, stats = _generate_rows(model, tokenizer, jobs, config, progress)
    _judge_rows(rows, judges, progress)
    names = [j.name for j in judges]
    metrics = asr_metrics(rows, names) + over_refusal_metrics(rows) + agreement_metrics(rows, names)
    metrics += [m for n in names if n != "refusal_keyword" for m in mean_score_metrics(rows, n)]
    metrics += _calibration_metrics(reference) if "embedding" in names else []
    utility, per_example = _utility(model, tokenizer, eval_data, config, reference, progress)
    metrics += utility + _throughput(stats, time.perf_counter() - start)
    return EvalResult(rows=rows, metrics=metrics, generation=stats, config_digest=config.digest(),
                      data_digest=eval_data.digest, reference_digest=reference.digest() if reference else None,
                      seconds=time.perf_counter() - start, knowledge_per_example=per_example)


def _throughput(stats: Sequence[GenerationStats], wall: float) -> list[MetricRow]:
    tokens, secs = sum(s.n_generated_tokens for s in stats), sum(s.seconds for s in stats)
    n = sum(s.n_prompts for s in stats)
    return [MetricRow("tokens_per_s", tokens / secs if secs else 0.0, None, "all", "all", "all", n),
            MetricRow("generated_tokens", float(tokens), None, "all", "all", "all", n),
            MetricRow("generation_seconds", secs, None, "all", "all", "all", n),
            MetricRow("eval_seconds", wall, None, "all", "all", "all", n)]
