import math

import pytest

from assistant.evaluation.correlation import pearson, ranks, spearman


def test_pearson_on_known_values():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])) and math.isnan(pearson([1], [2]))
    with pytest.raises(ValueError, match="equal lengths"):
        pearson([1, 2], [1])


def test_spearman_uses_ranks_with_ties():
    assert ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)      # monotone, not linear
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
