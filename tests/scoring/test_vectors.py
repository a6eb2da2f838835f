import numpy as np
import pytest

from ghostvlad.scoring.vectors import unit_rows


def test_unit_rows_divides_by_the_norm_of_the_last_axis():
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    np.testing.assert_allclose(unit_rows(x), [[0.6, 0.8], [0.0, -1.0]])
    assert unit_rows(x.astype(np.float32)).dtype == np.float32
    assert unit_rows(x, dtype=np.float32).dtype == np.float32
    assert unit_rows(np.array([0, 5])).tolist() == [0.0, 1.0]  # integers: float64
    np.testing.assert_allclose(unit_rows(np.array([1.0, 1.0])), [2**-0.5, 2**-0.5])  # one vector


@pytest.mark.parametrize("bad", [[0.0, 0.0], [np.nan, 1.0], [np.inf, 1.0]])
def test_unit_rows_refuses_vectors_without_a_direction(bad):
    with pytest.raises(ValueError, match="query has 1 zero vectors or vectors with NaN/inf"):
        unit_rows(np.array([[1.0, 0.0], bad]), "query")
