"""The matched-forgetting analysis on synthetic curves: interpolation, ranges, spread, verdicts both
ways, the report read back from a results store, and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cku_core.analysis.matched import (
    LevelStat,
    RunPoint,
    analyse,
    by_curve,
    common_range,
    interpolate,
    matched_levels,
    plot_matched,
    verdict,
)
from cku_core.results import ResultsError, ResultsStore


def pt(label: str, lr: float, seed: int, nll: float, ppl: float, degen: float = 0.0, asr: float = 0.5) -> RunPoint:
    return RunPoint(label, lr, seed, nll, {"perplexity": ppl, "degenerate_rate": degen, "asr": asr})


ORIGINAL = RunPoint("original", 0.0, -1, 1.0, {"perplexity": 10.0, "degenerate_rate": 0.0, "asr": 0.9})


def synthetic(noise: float = 0.1) -> list[RunPoint]:
    """`good` pays 1 perplexity per unit of forgetting, `bad` 5; three seeds shift utility by +-noise."""
    points = []
    for seed, shift in ((1, -noise), (2, 0.0), (3, noise)):
        for lr, nll in ((1e-4, 1.2), (3e-4, 1.6), (1e-3, 2.0)):
            points.append(pt("good", lr, seed, nll, 10 + 1 * (nll - 1) + shift))
        for lr, nll in ((1e-5, 1.3), (3e-5, 1.8), (1e-4, 2.4)):
            points.append(pt("bad", lr, seed, nll, 10 + 5 * (nll - 1) + shift, degen=0.5 * (nll - 1)))
    return points


def test_interpolation_is_linear_inside_the_curve_and_absent_outside() -> None:
    curve = [pt("a", 1e-4, 0, 1.2, 11.0), pt("a", 3e-4, 0, 1.6, 13.0)]
    assert interpolate(curve, "perplexity", 1.4) == pytest.approx(12.0)
    assert interpolate(curve, "perplexity", 1.2) == pytest.approx(11.0)
    assert interpolate(curve, "perplexity", 1.1) is None and interpolate(curve, "perplexity", 1.7) is None
    # the original model as the lr-0 end extends the curve down to its forgetting
    assert interpolate(curve, "perplexity", 1.1, anchor=ORIGINAL) == pytest.approx(10.5)


def test_interpolation_orders_by_forgetting_not_by_learning_rate() -> None:
    # a noisy grid where the larger lr forgot less: the curve is utility as a function of forgetting
    curve = [pt("a", 1e-4, 0, 1.6, 13.0), pt("a", 3e-4, 0, 1.2, 11.0)]
    assert interpolate(curve, "perplexity", 1.5) == pytest.approx(12.5)


def test_common_range_is_what_every_curve_reaches() -> None:
    curves = by_curve(synthetic())
    assert common_range(curves) == pytest.approx((1.3, 2.0))
    assert common_range(curves, anchor=ORIGINAL) == pytest.approx((1.0, 2.0))
    disjoint = by_curve([pt("a", 1, 0, 1.0, 1), pt("a", 2, 0, 1.2, 1), pt("b", 1, 0, 1.5, 1), pt("b", 2, 0, 2.0, 1)])
    assert common_range(disjoint) is None
    assert matched_levels(None, 5) == []
    assert matched_levels((1.0, 2.0), 4) == pytest.approx([1.25, 1.5, 1.75, 2.0])


def test_spread_std_and_minmax() -> None:
    s = LevelStat("a", "perplexity", 1.5, (10.0, 11.0, 15.0), 3)
    assert s.mean == pytest.approx(12.0)
    assert s.std == pytest.approx(2.6457513)  # sample std (ddof 1)
    assert s.interval("std") == pytest.approx((12.0 - 2.6457513, 12.0 + 2.6457513))
    assert s.interval("minmax") == (10.0, 15.0)
    assert LevelStat("a", "perplexity", 1.5, (3.0,), 3).std == 0.0


def stat(label: str, values: tuple[float, ...], n_seeds: int = 3) -> LevelStat:
    return LevelStat(label, "perplexity", 1.5, values, n_seeds)


def test_verdict_both_ways_and_not_distinguishable() -> None:
    low, high = stat("cku", (10.0, 10.2, 10.4)), stat("ga", (12.0, 12.5, 13.0))
    v = verdict(low, high)
    assert v.outcome == "better" and v.supported and v.text().startswith("cku better than ga at held-out harmful NLL 1.5")
    v = verdict(high, low)
    assert v.outcome == "worse" and v.text().startswith("cku better than ga")
    overlapping = stat("ga", (10.3, 11.0, 11.5))
    v = verdict(low, overlapping, "minmax")
    assert v.outcome == "not distinguishable" and "overlap" in v.reason and not v.supported
    assert "not distinguishable" in v.text()


def test_verdict_depends_on_the_spread_and_needs_two_seeds() -> None:
    a, b = stat("a", (10.0, 10.0, 13.0)), stat("b", (12.5, 12.5, 12.5))
    assert verdict(a, b, "minmax").outcome == "not distinguishable"   # [10, 13] touches 12.5
    assert verdict(a, b, "std").outcome == "not distinguishable"      # 11 +- 1.73 reaches 12.5
    c = stat("c", (13.0, 13.1, 13.2))
    assert verdict(a, c, "std").outcome == "better"                   # 12.73 < 13.0
    assert verdict(a, c, "minmax").outcome == "not distinguishable"   # 13.0 touches 13.0: overlap
    one_seed = stat("d", (20.0,), n_seeds=3)
    v = verdict(a, one_seed)
    assert v.outcome == "not distinguishable" and "1/3" in v.reason


def test_analyse_finds_the_cheaper_method_and_abstains_near_the_original() -> None:
    analysis = analyse(synthetic(noise=0.1), anchor=ORIGINAL, n_levels=4, spread="std")
    assert analysis.range == pytest.approx((1.0, 2.0)) and analysis.levels == pytest.approx([1.25, 1.5, 1.75, 2.0])
    ppl = {(v.level, v.metric): v for v in analysis.verdicts if v.metric == "perplexity"}
    far = ppl[(2.0, "perplexity")]
    assert (far.a, far.b, far.outcome) == ("good", "bad", "better")
    # degenerate rate: `good` has 0 everywhere, `bad` grows with forgetting but equals the original's at 1.0
    degen = [v for v in analysis.verdicts if v.metric == "degenerate_rate"]
    assert all(v.outcome == "better" for v in degen)
    # with a large seed noise the same gap is not distinguishable at the lowest level
    noisy = analyse(synthetic(noise=3.0), anchor=ORIGINAL, n_levels=4, spread="std")
    low = next(v for v in noisy.verdicts if v.metric == "perplexity" and v.level == pytest.approx(1.25))
    assert low.outcome == "not distinguishable"
    rows = analysis.summary_rows()
    assert len(rows) == 4 * 2 and rows[0]["seeds"] == "3/3"
    assert rows[-1]["perplexity"] == pytest.approx(10 + 5 * 1.0)  # `bad` at 2.0, mean over seeds


def test_explicit_levels_outside_a_curve_make_no_claim() -> None:
    analysis = analyse(synthetic(), levels=[2.2])  # only `bad` reaches 2.2
    assert {v.outcome for v in analysis.verdicts} == {"not distinguishable"}
    assert all("0/3" in v.reason for v in analysis.verdicts)


def test_a_narrow_range_gives_distinct_levels_and_no_self_comparison() -> None:
    from cku_core.analysis.matched_report import level_names

    points = [pt("a", 1, s, 1.0 + 1e-15, 10.0) for s in (1, 2)] + [pt("b", 1, s, 2.0, 12.0) for s in (1, 2)]
    analysis = analyse(points, anchor=ORIGINAL, n_levels=5)
    assert len(analysis.levels) == len(set(analysis.levels)) and analysis.levels
    assert all(v.a != v.b for v in analysis.verdicts)
    assert level_names([1.00001, 1.00002]) == ["1.00001", "1.00002"]
    assert level_names([1.5, 2.0]) == ["1.5", "2"]


def test_plot_is_written(tmp_path: Path) -> None:
    analysis = analyse(synthetic(), anchor=ORIGINAL, n_levels=3)
    png = plot_matched(analysis, tmp_path / "sub" / "curves.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_matched_runs(store: ResultsStore) -> str:
    """A parent cku-matched run, the original model and 2 methods x 2 lrs x 2 seeds, as the flow writes them."""
    parent = "parent-run"
    cfg = {"axis": "method", "seeds": [1, 2], "spread": "minmax", "n_levels": 2, "anchor_original": True,
           "lr_grids": {"good": [1e-4, 1e-3], "bad": [1e-5, 1e-4]}, "model": {"spec": "tiny:llama"},
           "unlearn": {"steps": 2, "batch_size": 2}, "vary_localization": []}
    # like the flow: the parent loads no model, so the digests live on the children
    store.write_rows("runs", parent, "start", [{"flow": "cku-matched", "name": "synthetic", "config": cfg,
                                                "status": "completed"}])
    children = [("original", None, None, 1.0, 10.0)] + [
        (label, lr, seed, nll, ppl + 0.05 * seed) for seed in (1, 2)
        for label, lr, nll, ppl in (("good", 1e-4, 1.5, 10.5), ("good", 1e-3, 2.0, 11.0),
                                    ("bad", 1e-5, 1.5, 12.5), ("bad", 1e-4, 2.5, 17.5))]
    for i, (method, lr, seed, nll, ppl) in enumerate(children):
        run = f"child-{i}"
        config = {"method": method, "unlearn": {"lr": lr, "seed": seed}, "mask": {"nlr": 0.8}, "scoring": {"seed": 0}}
        store.write_rows("runs", run, "start", [{"flow": "cku-pipeline", "method": method, "config": config,
                                                 "status": "completed", "parent_run_id": parent,
                                                 "model_digest": "m0", "data_digest": "d0"}])
        store.write_rows("metrics", run, "record", [
            {"method": method, "metric": "knowledge_nll", "judge": "knowledge_nll", "attack": "none", "family": "none",
             "subset": "harmful_reference", "value": nll, "n": 7},
            {"method": method, "metric": "perplexity", "attack": "none", "family": "none", "subset": "benign",
             "value": ppl, "n": 300},
            {"method": method, "metric": "degenerate_rate", "attack": "direct", "family": "direct",
             "subset": "over_refusal", "value": 0.0, "n": 16}])
    return parent


def test_report_from_the_results_store(results: ResultsStore, tmp_path: Path) -> None:
    from cku_core.analysis.matched_report import load_matched, render_matched_report

    parent = write_matched_runs(results)
    data = load_matched("parent", results)
    assert len(data.points()) == 8 and data.anchor() is not None and data.anchor().forgetting == 1.0
    text = render_matched_report("synthetic", store=results, plot_path=tmp_path / "r-curves.png")
    assert (tmp_path / "r-curves.png").exists() and "![forgetting vs utility](r-curves.png)" in text
    for needed in ("## What was measured", "model digest (original weights) | m0", "data digest | d0",
                   "training seeds (unlearn.seed) | 1, 2", "7 references", "16 benign (safe) prompts",
                   "good better than bad at held-out harmful NLL 2", "### Every comparison"):
        assert needed in text, needed
    assert json.loads(results.query("SELECT config FROM runs WHERE run_id = ?", [parent])[1][0][0])["axis"] == "method"
    results.write_rows("runs", "plain-run", "start", [{"flow": "cku-pipeline", "config": {"method": "cku"}}])
    with pytest.raises(ResultsError, match="not a matched-forgetting run"):
        load_matched("plain-run", results)


def test_a_report_can_compare_a_subset_of_the_points(results: ResultsStore) -> None:
    from cku_core.analysis.matched_report import load_matched, only_labels

    write_matched_runs(results)
    # a third point that barely forgets narrows the range every curve reaches ...
    for seed in (1, 2):
        run = f"weak-{seed}"
        results.write_rows("runs", run, "start", [{"flow": "cku-pipeline", "method": "weak", "status": "completed",
                                                   "config": {"method": "weak", "unlearn": {"lr": 1e-3, "seed": seed},
                                                              "mask": {"nlr": 0.8}, "scoring": {"seed": 0}},
                                                   "parent_run_id": "parent-run"}])
        results.write_rows("metrics", run, "record", [
            {"method": "weak", "metric": "knowledge_nll", "judge": "knowledge_nll", "attack": "none", "family": "none",
             "subset": "harmful_reference", "value": 1.2, "n": 7},
            {"method": "weak", "metric": "perplexity", "attack": "none", "family": "none", "subset": "benign",
             "value": 10.1, "n": 300}])
    data = load_matched("parent", results)
    assert data.analyse().range == (1.0, 1.2)
    # ... leaving it out gives back the range of the others, and the original model stays the anchor
    kept = only_labels(data, ["good", "bad"])
    assert kept.analyse().range == (1.0, 2.0) and kept.anchor() is not None
    assert {p.label for p in kept.points()} == {"good", "bad"}
    with pytest.raises(ResultsError, match="does not have: nope"):
        only_labels(data, ["good", "nope"])


def test_analysis_does_not_import_prefect() -> None:
    code = ("import sys, cku_core.analysis.matched, cku_core.analysis.matched_report\n"
            "assert 'prefect' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_rate_difference_below_one_unit_is_not_claimed() -> None:
    from cku_core.analysis.matched import LevelStat, verdict

    a = LevelStat("a", "asr", 1.5, (0.440, 0.441, 0.442), 3)
    b = LevelStat("b", "asr", 1.5, (0.430, 0.431, 0.432), 3)  # intervals apart, but 0.01 < one unit of 20
    assert verdict(a, b).outcome == "worse"
    v = verdict(a, b, min_effect=1 / 20)
    assert v.outcome == "not distinguishable" and "resolution" in v.reason
    assert verdict(a, LevelStat("c", "asr", 1.5, (0.30, 0.31, 0.32), 3), min_effect=1 / 20).outcome == "worse"
