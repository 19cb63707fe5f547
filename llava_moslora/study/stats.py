"""Mean, standard deviation, paired 95% intervals and minimum detectable effects, without scipy.

Two intervals for a paired difference (variant minus reference):
- over seeds (Student's t on the per-seed differences): it treats the test questions as fixed,
  so it says how sure we are about *this* test set, not about the task the questions sample;
- over seeds and questions (crossed_difference): the paired differences d[s, q] (seed s,
  question q, same for both) follow the crossed random-effects model d = mu + a_s + b_q + e_sq,
  whose mean has variance var(a)/S + var(b)/Q + var(e)/(SQ). The two-way ANOVA mean squares
  give an unbiased estimate of it (Satterthwaite's degrees of freedom for the t quantile). A
  bootstrap that resamples seeds and questions together (the "pigeonhole" bootstrap) counts
  var(e) about three times, and with 0/1 answers var(e) is most of the variance, so its
  intervals are too wide; simulate_study below checks the coverage of both intervals.
The minimum detectable effect (95% confidence, 80% power) is (t_0.975 + t_0.80) x standard error.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence

import numpy as np

def t_quantile_975(df: int) -> float:
    """The two-sided 95% quantile of Student's t (the per-seed interval's)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return t_quantile(0.975, df)


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (Lentz's continued fraction)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with `df` (any positive real) degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / (df + x * x), df / 2.0, 0.5)
    return 1.0 - tail if x >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (df any positive real), by bisection on t_cdf."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def detectable_effect(standard_error: float, df: float) -> float:
    """Minimum detectable effect of a two-sided 5% test with 80% power: (t_0.975 + t_0.80) x SE."""
    return (t_quantile(0.975, df) + t_quantile(0.80, df)) * standard_error


@dataclass
class Summary:
    mean: float
    std: Optional[float]  # sample standard deviation (n - 1); None for one value
    n: int

    def text(self, digits: int = 1) -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass
class PairedDifference:
    mean: float
    low: Optional[float]  # 95% interval over seeds; None with one pair
    high: Optional[float]
    n: int
    mde: Optional[float] = None  # minimum detectable effect (95% confidence, 80% power)

    @property
    def includes_zero(self) -> Optional[bool]:
        return None if self.low is None else self.low <= 0.0 <= self.high

    def text(self, digits: int = 1) -> str:
        if self.low is None:
            return f"{self.mean:+.{digits}f} (one seed: no interval)"
        verdict = " (includes 0)" if self.includes_zero else ""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]{verdict}"


def summarize(values: Sequence[float]) -> Summary:
    values = list(values)
    if not values:
        raise ValueError("no values to summarize")
    return Summary(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def paired_difference(values: Sequence[float], reference: Sequence[float]) -> PairedDifference:
    """Mean of values[i] - reference[i] (the same seed i) with its 95% t interval."""
    if len(values) != len(reference) or not values:
        raise ValueError(f"paired values need the same, non-zero length ({len(values)} vs {len(reference)})")
    differences = [a - b for a, b in zip(values, reference)]
    mean = statistics.fmean(differences)
    if len(differences) == 1:
        return PairedDifference(mean, None, None, 1)
    error = statistics.stdev(differences) / math.sqrt(len(differences))
    half = t_quantile_975(len(differences) - 1) * error
    return PairedDifference(mean, mean - half, mean + half, len(differences),
                            detectable_effect(error, len(differences) - 1))


@dataclass
class CrossedDifference:
    """A paired difference with its 95% interval over seeds and questions (crossed_difference)."""

    mean: float
    standard_error: float
    df: float  # Satterthwaite's
    seeds: int
    questions: int
    seed_share: float  # the share of the variance from seeds (training noise), 0-1

    @cached_property
    def half_width(self) -> float:
        return t_quantile(0.975, self.df) * self.standard_error

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @cached_property
    def mde(self) -> float:
        return detectable_effect(self.standard_error, self.df)

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def text(self, digits: int = 1) -> str:
        if self.standard_error == 0:
            return f"{self.mean:+.{digits}f} (the same on every seed and question)"
        verdict = " (includes 0)" if self.includes_zero else ""
        return (f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]{verdict}, "
                f"MDE {self.mde:.{digits}f}")


def crossed_difference(blocks: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None,
                       scale: float = 100.0) -> CrossedDifference:
    """The difference sum_k weights[k] * mean(blocks[k]) x scale and its variance over seeds and
    questions. Each block is an S x Q_k array of paired differences (rows: the same S seeds in
    every block; columns: questions, e.g. one benchmark's rows), so an ability is one block and
    the mean of two benchmarks' scores two blocks of weight 1/2.

    Var = s_X^2 / S + sum_k w_k^2 max(0, MS_q,k - MS_e,k) / (S Q_k), where X_s is seed s's
    weighted score difference (its spread holds the seed and the seed x question terms) and the
    two-way ANOVA of block k gives the question component (its mean squares over questions and
    residual); the degrees of freedom are Satterthwaite's."""
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks]
    weights = [1.0 / len(blocks)] * len(blocks) if weights is None else [float(w) for w in weights]
    seeds = blocks[0].shape[0]
    if not blocks or any(b.ndim != 2 or b.shape[0] != seeds or b.shape[1] < 2 for b in blocks) or len(weights) != len(blocks):
        raise ValueError("blocks must be S x Q arrays with the same S seeds, Q >= 2, one weight each")
    if seeds < 2:
        raise ValueError("an interval over seeds needs at least 2 seeds")
    per_seed = sum(w * b.mean(axis=1) for w, b in zip(weights, blocks))  # X_s
    seed_term = per_seed.var(ddof=1) / seeds
    terms = [(seed_term, seeds - 1.0)]  # (variance term, its degrees of freedom)
    question_variance = 0.0
    for w, b in zip(weights, blocks):
        questions = b.shape[1]
        row, column, grand = b.mean(axis=1, keepdims=True), b.mean(axis=0, keepdims=True), b.mean()
        ms_question = seeds * ((column - grand) ** 2).sum() / (questions - 1)
        ms_residual = ((b - row - column + grand) ** 2).sum() / ((seeds - 1) * (questions - 1))
        factor = w * w / (seeds * questions)
        if ms_question > ms_residual:  # else the question component is estimated as 0
            question_variance += factor * (ms_question - ms_residual)
            terms += [(factor * ms_question, questions - 1.0), (-factor * ms_residual, (seeds - 1.0) * (questions - 1))]
    variance = seed_term + question_variance
    denominator = sum(value ** 2 / df for value, df in terms)
    df = variance ** 2 / denominator if denominator > 0 else float(seeds - 1)
    df = max(df, 1.0)
    mean = scale * float(per_seed.mean())
    return CrossedDifference(mean, scale * math.sqrt(variance), df, seeds, sum(b.shape[1] for b in blocks),
                             seed_term / variance if variance > 0 else 1.0)


# Simulated questions: (share, P(right) for the reference, P(right) for the variant). Most are
# answered alike by both (easy, hard, a coin toss); some suit one variant, as when one adapter
# learned a relation the other missed. The shares of the last two are simulate_study's to set.
QUESTION_KINDS = {"easy": (0.95, 0.95), "hard": (0.1, 0.1), "coin": (0.5, 0.5),
                  "favours variant": (0.1, 0.9), "favours reference": (0.9, 0.1)}


def simulate_study(*, favour_variant: float = 0.06, favour_reference: float = 0.04, seed_spread: float = 0.03,
                   seeds: int = 5, questions: int = 1000, simulations: int = 400, rng_seed: int = 0) -> dict:
    """Coverage of both 95% intervals on simulated paired studies whose true difference is known.

    Each question is of a kind (QUESTION_KINDS: 10% hard, 10% coin, the given shares favouring
    either variant, easy otherwise), answered right with its kind's probability plus, per
    variant and seed, a training offset uniform in +-seed_spread (mean 0). Every probability
    stays in [0, 1], so the difference over the populations of seeds and questions is exactly
    0.8 x (favour_variant - favour_reference)."""
    shares = {"hard": 0.1, "coin": 0.1, "favours variant": favour_variant, "favours reference": favour_reference}
    shares["easy"] = 1.0 - sum(shares.values())
    if shares["easy"] < 0 or not 0 <= seed_spread <= 0.05:
        raise ValueError("the shares must leave room for easy questions and seed_spread be in [0, 0.05] "
                         "(probabilities must stay in [0, 1] for the truth to be exact)")
    kinds = list(QUESTION_KINDS)
    probabilities = np.array([shares[k] for k in kinds])
    chance = np.array([QUESTION_KINDS[k] for k in kinds])  # kinds x (reference, variant)
    truth = float(probabilities @ (chance[:, 1] - chance[:, 0]))
    rng = np.random.default_rng(rng_seed)
    methods = ("seeds_and_questions", "seeds_only")
    covered, widths = dict.fromkeys(methods, 0), {m: [] for m in methods}
    for _ in range(simulations):
        kind = rng.choice(len(kinds), size=questions, p=probabilities)
        offsets = rng.uniform(-seed_spread, seed_spread, size=(2, seeds, 1))
        reference = rng.random((seeds, questions)) < chance[kind, 0] + offsets[0]
        variant = rng.random((seeds, questions)) < chance[kind, 1] + offsets[1]
        crossed = crossed_difference([variant.astype(np.float64) - reference], scale=1.0)
        per_seed = paired_difference(list(variant.mean(axis=1)), list(reference.mean(axis=1)))
        for method, interval in zip(methods, (crossed, per_seed)):
            covered[method] += interval.low <= truth <= interval.high
            widths[method].append(interval.high - interval.low)
    return {"truth": truth, "simulations": simulations, "seeds": seeds, "questions": questions,
            "coverage": {m: covered[m] / simulations for m in methods},
            "median_width": {m: float(np.median(widths[m])) for m in methods}}
