"""Mean, standard deviation and paired 95% intervals over seeds (Student's t), without scipy."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30; beyond 30 the Cornish-Fisher expansion
# around the normal quantile is within 1e-3.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


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
    half = t_quantile_975(len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return PairedDifference(mean, mean - half, mean + half, len(differences))
