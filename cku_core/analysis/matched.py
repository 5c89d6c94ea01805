"""Compare unlearning methods (or NLR / layer-band points) at matched forgetting.

Why: at one learning rate the methods forget different amounts (CKU may change only a fraction of
the units of a few layers, GA changes all of them), so a table at one learning rate compares a
little forgetting with a lot of damage. Instead every method runs over a grid of learning rates and
seeds, and utility is compared at the same amount of forgetting.

Definitions (every function below follows them):
- forgetting: the held-out harmful NLL of the knowledge judge (higher = the knowledge is further gone).
- utility metrics: benign perplexity and the degenerate rate of answers to benign prompts; ASR is
  compared the same way. Lower is better for all three.
- curve: the runs of one (label, seed) pair (label = method, NLR point or layer band) over the
  learning-rate grid, ordered by forgetting; a metric between two runs is linearly interpolated.
  Optionally the original model is added to every curve as its learning-rate-0 end (`anchor`).
  There is no extrapolation: a curve has no value outside its own forgetting range.
- matched levels: forgetting values inside the range that *every* curve reaches.
- spread across seeds: `std` (mean +- sample standard deviation) or `minmax` (lowest to highest seed).
- verdict: "A better than B" at a level only when both have at least `min_seeds` seeds there and
  A's interval lies entirely on the better side of B's; anything else is "not distinguishable".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Spread = Literal["std", "minmax"]
Outcome = Literal["better", "worse", "not distinguishable"]

FORGETTING_NAME = "held-out harmful NLL"
# Metrics compared at matched forgetting; all three are lower-is-better.
METRICS: dict[str, str] = {
    "perplexity": "benign perplexity",
    "degenerate_rate": "degenerate rate (benign prompts)",
    "asr": "ASR",
}
_EPS = 1e-9  # levels computed from the data must count as reached despite float rounding


@dataclass(frozen=True)
class RunPoint:
    """One unlearning run: where it sits on the curve of its (label, seed) and what it measured."""

    label: str
    lr: float
    seed: int
    forgetting: float
    metrics: Mapping[str, float | None]
    run_id: str = ""


Curves = dict[str, dict[int, list[RunPoint]]]  # label -> seed -> runs ordered by learning rate


def by_curve(points: Iterable[RunPoint]) -> Curves:
    """Group runs into curves, labels and seeds in first-seen order, each curve ordered by lr."""
    curves: Curves = {}
    for p in points:
        curves.setdefault(p.label, {}).setdefault(p.seed, []).append(p)
    return {label: {seed: sorted(c, key=lambda p: p.lr) for seed, c in seeds.items()} for label, seeds in curves.items()}


def _xy(curve: Sequence[RunPoint], metric: str, anchor: RunPoint | None) -> list[tuple[float, float]]:
    runs = list(curve) + ([anchor] if anchor is not None else [])
    return sorted((p.forgetting, float(p.metrics[metric])) for p in runs
                  if p.metrics.get(metric) is not None and not math.isnan(float(p.metrics[metric])))


def interpolate(curve: Sequence[RunPoint], metric: str, level: float, anchor: RunPoint | None = None) -> float | None:
    """`metric` of this curve at forgetting `level` (linear between runs); None outside its range."""
    xy = _xy(curve, metric, anchor)
    if not xy or level < xy[0][0] - _EPS or level > xy[-1][0] + _EPS:
        return None
    xs, ys = zip(*xy)
    return float(np.interp(level, xs, ys))


def reach(curve: Sequence[RunPoint], anchor: RunPoint | None = None) -> tuple[float, float]:
    """The forgetting range a curve covers (with the anchor as its learning-rate-0 end)."""
    xs = [p.forgetting for p in curve] + ([anchor.forgetting] if anchor is not None else [])
    return min(xs), max(xs)


def common_range(curves: Curves, anchor: RunPoint | None = None) -> tuple[float, float] | None:
    """The forgetting range every curve reaches; None when the curves do not overlap."""
    ranges = [reach(c, anchor) for seeds in curves.values() for c in seeds.values() if c]
    if not ranges:
        return None
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    return (lo, hi) if lo <= hi else None


def matched_levels(rng: tuple[float, float] | None, n: int) -> list[float]:
    """`n` levels evenly spaced in (lo, hi]: the low end is skipped because with an anchor it is the
    original model itself, where every method trivially has the same utility."""
    if rng is None or n < 1:
        return []
    lo, hi = rng
    return [lo + (hi - lo) * k / n for k in range(1, n + 1)]


@dataclass(frozen=True)
class LevelStat:
    """One label's metric at one forgetting level: the interpolated value of each seed that reaches it."""

    label: str
    metric: str
    level: float
    values: tuple[float, ...]
    n_seeds: int  # seeds of the label, reached or not

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0

    def interval(self, spread: Spread) -> tuple[float, float]:
        if not self.values:
            return math.nan, math.nan
        if spread == "std":
            return self.mean - self.std, self.mean + self.std
        return min(self.values), max(self.values)

    def describe(self, spread: Spread) -> str:
        lo, hi = self.interval(spread)
        return f"{self.mean:.4g} [{lo:.4g}, {hi:.4g}]" if self.values else "-"


def level_stats(curves: Curves, metrics: Iterable[str], levels: Sequence[float],
                anchor: RunPoint | None = None) -> list[LevelStat]:
    """Every (label, metric, level): the seeds' interpolated values."""
    out = []
    for label, seeds in curves.items():
        for metric in metrics:
            for level in levels:
                values = [interpolate(c, metric, level, anchor) for c in seeds.values()]
                out.append(LevelStat(label, metric, level, tuple(v for v in values if v is not None), len(seeds)))
    return out


@dataclass(frozen=True)
class Verdict:
    """A compared with B on one metric at one forgetting level."""

    a: str
    b: str
    metric: str
    level: float
    outcome: Outcome
    reason: str

    @property
    def supported(self) -> bool:
        return self.outcome != "not distinguishable"

    def text(self) -> str:
        at = f"at {FORGETTING_NAME} {self.level:.4g}, {METRICS.get(self.metric, self.metric)}"
        if self.outcome == "not distinguishable":
            return f"{self.a} vs {self.b} {at}: not distinguishable ({self.reason})"
        winner, loser = (self.a, self.b) if self.outcome == "better" else (self.b, self.a)
        return f"{winner} better than {loser} {at} ({self.reason})"


def verdict(a: LevelStat, b: LevelStat, spread: Spread = "std", min_seeds: int = 2, min_effect: float = 0.0) -> Verdict:
    """A vs B (same metric and level; lower is better): a side wins only if the intervals do not overlap
    and the means differ by at least `min_effect`.

    Touching intervals count as overlapping. With fewer than `min_seeds` seeds there is no spread to
    judge by, so nothing is claimed. `min_effect` is the metric's resolution: a rate measured on n
    units moves in steps of 1/n, and interpolating between runs yields smaller differences (seeds
    that all sit near the original model can have a tiny spread) that no single run could show.
    """
    if (a.metric, a.level) != (b.metric, b.level):
        raise ValueError(f"cannot compare {a.metric}@{a.level} with {b.metric}@{b.level}")
    compare = lambda outcome, why: Verdict(a.label, b.label, a.metric, a.level, outcome, why)
    if a.n < min_seeds or b.n < min_seeds:
        return compare("not distinguishable", f"needs {min_seeds} seeds at this level; "
                                              f"{a.label} has {a.n}/{a.n_seeds}, {b.label} {b.n}/{b.n_seeds}")
    (alo, ahi), (blo, bhi) = a.interval(spread), b.interval(spread)
    numbers = f"{a.label} {a.describe(spread)} vs {b.label} {b.describe(spread)}, {spread}"
    if (ahi < blo or bhi < alo) and abs(a.mean - b.mean) < min_effect:
        return compare("not distinguishable", f"difference {abs(a.mean - b.mean):.3g} is below the metric's "
                                              f"resolution {min_effect:.3g}: {numbers}")
    if ahi < blo:
        return compare("better", numbers)
    if bhi < alo:
        return compare("worse", numbers)
    return compare("not distinguishable", f"intervals overlap: {numbers}")


def all_verdicts(stats: Sequence[LevelStat], spread: Spread = "std", min_seeds: int = 2,
                 resolution: Mapping[str, float] | None = None) -> list[Verdict]:
    """Every pair of labels, for every metric and level present in `stats` (pairs in label order);
    `resolution`: the smallest difference claimed, per metric (default 0)."""
    groups: dict[tuple[str, float], list[LevelStat]] = {}
    for s in stats:
        groups.setdefault((s.metric, s.level), []).append(s)
    resolution = resolution or {}
    return [verdict(a, b, spread, min_seeds, resolution.get(a.metric, 0.0))
            for group in groups.values() for a, b in itertools.combinations(group, 2) if a.label != b.label]


@dataclass
class MatchedAnalysis:
    """Everything the report and the plot need, computed from the runs alone."""

    curves: Curves
    anchor: RunPoint | None
    range: tuple[float, float] | None
    levels: list[float]
    stats: list[LevelStat]
    verdicts: list[Verdict]
    spread: Spread
    metrics: tuple[str, ...] = field(default_factory=lambda: tuple(METRICS))

    @property
    def labels(self) -> list[str]:
        return list(self.curves)

    def summary_rows(self) -> list[dict[str, object]]:
        """One row per (level, label): mean and interval of each metric, and the seeds that reach it."""
        rows: dict[tuple[float, str], dict[str, object]] = {}
        for s in self.stats:
            row = rows.setdefault((s.level, s.label), {"harmful_nll": round(s.level, 4), "label": s.label})
            lo, hi = s.interval(self.spread)
            row.update({s.metric: _round(s.mean), f"{s.metric}_lo": _round(lo), f"{s.metric}_hi": _round(hi)})
            row["seeds"] = f"{s.n}/{s.n_seeds}"
        return list(rows.values())


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def analyse(points: Sequence[RunPoint], anchor: RunPoint | None = None, levels: Sequence[float] | None = None,
            n_levels: int = 5, spread: Spread = "std", min_seeds: int = 2,
            metrics: Sequence[str] = tuple(METRICS), resolution: Mapping[str, float] | None = None) -> MatchedAnalysis:
    """Curves, the common forgetting range, levels (given, else `n_levels` inside the range),
    per-level statistics and every pairwise verdict (none smaller than `resolution[metric]`)."""
    curves = by_curve(points)
    rng = common_range(curves, anchor)
    chosen = sorted(set(levels if levels else matched_levels(rng, n_levels)))  # a narrow range can repeat a level
    stats = level_stats(curves, metrics, chosen, anchor)
    return MatchedAnalysis(curves, anchor, rng, chosen, stats, all_verdicts(stats, spread, min_seeds, resolution),
                           spread, tuple(metrics))


# ------------------------------------------------------------------ plot
def _spread_err(values: Sequence[float], spread: Spread) -> tuple[float, float, float]:
    """(mean, error below, error above) of one grid point's seeds."""
    mean = float(np.mean(values))
    if spread == "std":
        s = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return mean, s, s
    return mean, mean - min(values), max(values) - mean


def grid_means(curves: Curves, label: str, metric: str, spread: Spread
               ) -> list[tuple[float, tuple[float, float, float], tuple[float, float, float]]]:
    """Per learning rate of `label`: (lr, forgetting mean/err, metric mean/err) across seeds."""
    by_lr: dict[float, list[RunPoint]] = {}
    for curve in curves[label].values():
        for p in curve:
            if p.metrics.get(metric) is not None:
                by_lr.setdefault(p.lr, []).append(p)
    return [(lr, _spread_err([p.forgetting for p in ps], spread),
             _spread_err([float(p.metrics[metric]) for p in ps], spread)) for lr, ps in sorted(by_lr.items())]


def plot_matched(analysis: MatchedAnalysis, path: Path, metrics: Sequence[str] = ("perplexity", "degenerate_rate")
                 ) -> Path | None:
    """Forgetting (x) against each metric (one panel each): per label the mean over seeds at every
    learning rate with the seed spread as error bars in both directions, the original model as a
    star, the matched range shaded. Returns None when matplotlib is missing or there is nothing to draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and workers
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not analysis.curves:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        _plot_panel(ax, analysis, metric)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Utility at matched forgetting (error bars: seed {analysis.spread})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_panel(ax: object, analysis: MatchedAnalysis, metric: str) -> None:
    values: list[float] = []
    for label in analysis.labels:
        pts = sorted(grid_means(analysis.curves, label, metric, analysis.spread), key=lambda g: g[1][0])
        if not pts:
            continue
        xs, ys = [g[1][0] for g in pts], [g[2][0] for g in pts]
        bars = ax.errorbar(xs, ys, xerr=[[g[1][1] for g in pts], [g[1][2] for g in pts]],
                           yerr=[[g[2][1] for g in pts], [g[2][2] for g in pts]], marker="o", capsize=3, label=label)
        values += ys
        anchor = analysis.anchor
        if anchor is not None and anchor.metrics.get(metric) is not None:  # the interpolated lr-0 segment
            ax.plot([anchor.forgetting, xs[0]], [float(anchor.metrics[metric]), ys[0]], linestyle="--",
                    color=bars[0].get_color(), linewidth=1)
    anchor = analysis.anchor
    if anchor is not None and anchor.metrics.get(metric) is not None:
        ax.scatter([anchor.forgetting], [anchor.metrics[metric]], marker="*", s=160, color="black", zorder=5,
                   label="original")
        values.append(float(anchor.metrics[metric]))
    if analysis.range is not None:
        ax.axvspan(*analysis.range, color="0.9", zorder=0, label="matched range")
    for level in analysis.levels:
        ax.axvline(level, color="0.6", linestyle=":", linewidth=0.8)
    positive = [v for v in values if v > 0]
    if metric == "perplexity" and positive and max(positive) / min(positive) > 10:
        ax.set_yscale("log")  # a broken model's perplexity would flatten every other curve
    ax.set_xlabel(f"{FORGETTING_NAME} (higher = more forgotten)")
    ax.set_ylabel(f"{METRICS.get(metric, metric)} (lower is better)")
