import numpy as np
import pytest

from ghostvlad.scoring.asnorm import as_norm, cohort_scores


def _reference(scores, enroll, test, top_k):
    out = []
    for s, e, t in zip(scores, enroll, test):
        e_top = sorted(e, reverse=True)[:top_k]
        t_top = sorted(t, reverse=True)[:top_k]
        out.append(0.5 * ((s - np.mean(e_top)) / np.std(e_top) + (s - np.mean(t_top)) / np.std(t_top)))
    return np.array(out)


@pytest.mark.parametrize("top_k", [2, 10, 50])
def test_as_norm_matches_loop(top_k):
    rng = np.random.default_rng(0)
    scores, enroll, test = rng.normal(size=40), rng.normal(size=(40, 50)), rng.normal(size=(40, 50))
    expected = _reference(scores, enroll, test, top_k)
    np.testing.assert_allclose(as_norm(scores, enroll, test, top_k), expected, rtol=1e-12)


def test_as_norm_top_k_clipped_to_cohort_size():
    rng = np.random.default_rng(1)
    scores, enroll, test = rng.normal(size=5), rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    expected = _reference(scores, enroll, test, 8)
    np.testing.assert_allclose(as_norm(scores, enroll, test, top_k=300), expected, rtol=1e-12)
    np.testing.assert_allclose(as_norm(scores, enroll, test, top_k=300), as_norm(scores, enroll, test, top_k=8))


def test_as_norm_uses_only_top_scores():
    # Low cohort scores outside the top k must not matter.
    rng = np.random.default_rng(2)
    scores, enroll, test = rng.normal(size=6), rng.normal(size=(6, 20)), rng.normal(size=(6, 20))
    lowered_e, lowered_t = enroll.copy(), test.copy()
    lowered_e[enroll < np.sort(enroll, axis=1)[:, [-5]]] -= 100
    lowered_t[test < np.sort(test, axis=1)[:, [-5]]] -= 100
    np.testing.assert_allclose(as_norm(scores, enroll, test, 5), as_norm(scores, lowered_e, lowered_t, 5))


@pytest.mark.parametrize(
    ("shapes", "top_k", "message"),
    [
        (((3,), (3, 4), (3, 5)), 2, "shapes"),
        (((2,), (3, 4), (3, 4)), 2, "shapes"),
        (((3,), (3, 4), (3, 4)), 1, "at least 2"),
        (((3,), (3, 1), (3, 1)), 300, "at least 2"),
    ],
)
def test_as_norm_bad_input(shapes, top_k, message):
    with pytest.raises(ValueError, match=message):
        as_norm(*(np.ones(shape) for shape in shapes), top_k=top_k)


def test_as_norm_constant_cohort():
    with pytest.raises(ValueError, match="standard deviation is 0"):
        as_norm(np.zeros(2), np.ones((2, 4)), np.arange(8.0).reshape(2, 4), top_k=3)


def test_cohort_scores_is_cosine():
    rng = np.random.default_rng(3)
    emb, cohort = rng.normal(size=(4, 16)), rng.normal(size=(7, 16))
    expected = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in cohort] for a in emb])
    np.testing.assert_allclose(cohort_scores(emb * 3.0, cohort), expected, rtol=1e-6)
    assert cohort_scores(emb.astype(np.float32), cohort.astype(np.float32)).dtype == np.float32


def test_cohort_scores_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        cohort_scores(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="zero vectors"):
        cohort_scores(np.zeros((1, 3)), np.ones((2, 3)))
