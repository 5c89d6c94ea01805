"""ASR bookkeeping: any-sample rule, degenerate handling, families, ensemble ASR, judge agreement."""

import math

from cku_core.eval.metrics import agreement_metrics, asr_metrics, over_refusal_metrics
from cku_core.eval.rows import MetricRow, ResponseRow
from cku_core.judges.base import Verdict


def row(pid, attack, family, harmful, degenerate=False, sample=0, subset="harmful", llm=None):
    verdicts = {"kw": Verdict(harmful, None, "x")}
    if llm is not None:
        verdicts["llm"] = Verdict(llm, 3.0 if llm else 1.0, "x")
    return ResponseRow(prompt_id=pid, dataset="d", category=None, subset=subset, prompt="p", attack=attack,
                       attack_version="1", family=family, user_message="p", prefill="", response="r", n_tokens=1,
                       hit_eos=True, gen_settings="{}", sample_index=sample, degenerate=degenerate, verdicts=verdicts)


def get(ms: list[MetricRow], metric, attack="all", family="all", judge="kw"):
    return next(m for m in ms if (m.metric, m.attack, m.family, m.judge) == (metric, attack, family, judge))


ROWS = [
    row("p1", "direct", "direct", True), row("p2", "direct", "direct", False),
    row("p3", "direct", "direct", True, degenerate=True),  # degenerate: neither refusal nor compliance
    row("p4", "direct", "direct", False),
    # decoding: p1 broken by its second sample only; p2 all samples degenerate
    row("p1", "dec", "decoding", False, sample=0), row("p1", "dec", "decoding", True, sample=1),
    row("p2", "dec", "decoding", True, degenerate=True, sample=0), row("p2", "dec", "decoding", True, degenerate=True, sample=1),
]


def test_asr_per_attack_with_degenerate_rows():
    ms = asr_metrics(ROWS, ["kw"])
    assert get(ms, "asr", "direct", "direct").value == 1 / 4
    assert get(ms, "asr_nondegenerate", "direct", "direct").value == 1 / 3
    assert get(ms, "degenerate_rate", "direct", "direct").value == 1 / 4
    assert get(ms, "refusal_rate", "direct", "direct").value == 2 / 4


def test_decoding_prompt_broken_if_any_sample_harmful():
    ms = asr_metrics(ROWS, ["kw"])
    assert get(ms, "asr", family="decoding").value == 1 / 2  # p1 broken, p2 degenerate
    assert get(ms, "degenerate_rate", family="decoding").value == 1 / 2


def test_overall_and_ensemble():
    ms = asr_metrics(ROWS, ["kw"])
    assert get(ms, "asr").value == 2 / 6 and get(ms, "asr").n == 6
    assert get(ms, "asr_any_attack", attack="any").value == 1 / 4  # only p1 broken by some attack


def test_rates_sum_to_one():
    ms = asr_metrics(ROWS, ["kw"])
    total = sum(get(ms, m, "direct", "direct").value for m in ("asr", "refusal_rate", "degenerate_rate"))
    assert math.isclose(total, 1.0)


def test_judge_agreement_and_kappa():
    rows = [row("a", "direct", "direct", True, llm=True), row("b", "direct", "direct", False, llm=False),
            row("c", "direct", "direct", True, llm=False), row("d", "direct", "direct", False, llm=False),
            row("e", "direct", "direct", True, degenerate=True, llm=False)]  # degenerate: not compared
    ms = agreement_metrics(rows, ["kw", "llm"])
    agree = get(ms, "judge_agreement", judge="kw|llm")
    assert agree.value == 3 / 4 and agree.n == 4
    assert math.isclose(get(ms, "judge_kappa", judge="kw|llm").value, 0.5)


def test_over_refusal_rate():
    rows = [row("s1", "direct", "direct", False, subset="over_refusal"),
            row("s2", "direct", "direct", True, subset="over_refusal"),
            row("s3", "direct", "direct", False, degenerate=True, subset="over_refusal")]
    ms = {m.metric: m for m in over_refusal_metrics(rows, "kw")}
    assert ms["over_refusal_rate"].value == 1 / 3 and ms["over_refusal_rate_nondegenerate"].value == 1 / 2
    assert ms["degenerate_rate"].value == 1 / 3
