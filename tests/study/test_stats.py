"""Mean, spread and paired intervals over seeds against closed forms."""
import math

import pytest

from llava_moslora.study.stats import paired_difference, summarize, t_quantile_975


def test_t_quantiles_match_their_closed_forms():
    p = 0.975
    assert t_quantile_975(1) == pytest.approx(math.tan(math.pi * (p - 0.5)), abs=1e-4)  # Cauchy
    assert t_quantile_975(2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), abs=1e-4)
    assert t_quantile_975(30) == pytest.approx(2.0423, abs=1e-4)
    assert abs(t_quantile_975(31) - 2.0395) < 1e-3 and abs(t_quantile_975(120) - 1.9799) < 1e-3
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)


def test_paired_interval_by_hand():
    values, reference = [71.0, 74.0, 70.0], [70.0, 71.0, 69.0]
    difference = paired_difference(values, reference)  # differences 1, 3, 1: mean 5/3, sd sqrt(4/3)
    half = 4.3027 * math.sqrt(4 / 3) / math.sqrt(3)
    assert difference.mean == pytest.approx(5 / 3)
    assert (difference.low, difference.high) == pytest.approx((5 / 3 - half, 5 / 3 + half), abs=1e-3)
    assert difference.includes_zero and "includes 0" in difference.text()
    clear = paired_difference([75.0, 76.0, 77.0], [70.0, 70.5, 71.0])
    assert not clear.includes_zero and "includes 0" not in clear.text()
    one = paired_difference([75.0], [70.0])
    assert one.low is None and one.includes_zero is None and "one seed" in one.text()
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_summaries():
    assert summarize([1.0, 2.0, 3.0]).text() == "2.0 ± 1.0"
    assert summarize([4.0]).text() == "4.0" and summarize([4.0]).std is None


def test_trailing_mean_of_logged_losses():
    from llava_moslora.study.report import trailing_mean

    losses = {5: 1.0, 10: 3.0, 15: 2.0, 20: 6.0}
    assert trailing_mean(losses, 10) == {5: 1.0, 10: 2.0, 15: 2.5, 20: 4.0}
    assert trailing_mean(losses, 1) == losses
