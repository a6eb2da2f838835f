import numpy as np
import pytest
import torch

from ghostvlad.models.pooling import POOLINGS


def numpy_moments(f: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean and standard deviation over the last axis, in float64."""
    mean = (f * weights).sum(-1)
    std = np.sqrt(np.maximum((weights * (f - mean[..., None]) ** 2).sum(-1), 1e-6))
    return np.concatenate([mean, std], axis=-1)


def descriptors(lengths: list[int], dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    f = torch.rand(len(lengths), dim, max(lengths)) * 3
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return f, mask


def test_tstp_is_mean_and_std_of_the_valid_steps():
    f, mask = descriptors([9, 5])
    pool = POOLINGS.build("tstp", in_channels=1, height=1, dim=6, branches=1)
    out = pool(None, f, mask).numpy()
    for i, n in enumerate([9, 5]):
        ref = numpy_moments(f[i, :, :n].double().numpy(), np.full(n, 1 / n))
        np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-6)
    assert pool.out_dim == 12


def test_astp_weights_by_a_softmax_over_valid_steps():
    f, mask = descriptors([8, 3])
    pool = POOLINGS.build("astp", in_channels=1, height=1, dim=6, branches=1).eval()
    with torch.no_grad():
        out = pool(None, f, mask).numpy()
        scores = pool.attention(f).double().numpy()
    for i, n in enumerate([8, 3]):
        e = np.exp(scores[i, :, :n] - scores[i, :, :n].max(-1, keepdims=True))
        ref = numpy_moments(f[i, :, :n].double().numpy(), e / e.sum(-1, keepdims=True))
        np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-6)


def test_astp_with_constant_scores_equals_tstp():
    f, mask = descriptors([7, 4])
    pool = POOLINGS.build("astp", in_channels=1, height=1, dim=6, branches=1)
    torch.nn.init.zeros_(pool.attention[2].weight)
    torch.nn.init.zeros_(pool.attention[2].bias)
    with torch.no_grad():
        tstp = POOLINGS.build("tstp", in_channels=1, height=1, dim=6, branches=1)
        torch.testing.assert_close(pool(None, f, mask), tstp(None, f, mask))


@pytest.mark.parametrize("name", ["tstp", "astp"])
def test_statistics_stay_fp32_under_bf16_autocast(name):
    f, mask = descriptors([10, 6])
    pool = POOLINGS.build(name, in_channels=1, height=1, dim=6, branches=1)
    with torch.no_grad():
        ref = pool(None, f, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = pool(None, f.bfloat16(), mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0.02)  # only the bf16 rounding of the inputs differs
