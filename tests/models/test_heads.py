import math

import pytest
import torch
import torch.nn.functional as F

from ghostvlad.models import HEADS


def test_registry_lists_heads():
    assert HEADS.names() == ["aamsoftmax", "amsoftmax", "softmax"]


def test_softmax_is_bias_free_linear():
    head = HEADS.build("softmax", embed_dim=4, classes=3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(head(x, torch.zeros(5, dtype=torch.long)), x @ head.weight.T)


@pytest.mark.parametrize(("name", "margin"), [("amsoftmax", 0.35), ("aamsoftmax", 0.2)])
def test_margin_only_on_target_and_only_in_training(name, margin):
    torch.manual_seed(0)
    head = HEADS.build(name, embed_dim=8, classes=5)
    assert head.margin == margin and head.scale == 30.0
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    head.train()
    logits = head(x, y)
    target = cos.gather(1, y[:, None])
    if name == "amsoftmax":
        expected_target = 30 * (target - 0.35)
    else:
        expected_target = 30 * torch.cos(torch.acos(target) + 0.2)
    torch.testing.assert_close(logits.gather(1, y[:, None]), expected_target, atol=1e-4, rtol=0)
    other = torch.ones_like(cos, dtype=torch.bool).scatter(1, y[:, None], False)
    torch.testing.assert_close(logits[other], 30 * cos[other], atol=1e-5, rtol=0)
    head.eval()
    torch.testing.assert_close(head(x, y), 30 * cos, atol=1e-5, rtol=0)


def test_aam_margin_stays_monotonic_near_pi():
    head = HEADS.build("aamsoftmax", embed_dim=2, classes=2, margin=0.5).train()
    head.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[-1.0, 1e-3]])  # theta ~ pi for class 0
    logit = head(x, torch.tensor([0]))[0, 0]
    assert logit < 30 * math.cos(math.pi - 1e-3) + 1e-3


def test_angular_prototypical_loss_against_a_direct_computation():
    from ghostvlad.models.heads import AngularPrototypicalLoss

    torch.manual_seed(0)
    x = torch.randn(4 * 3, 8)
    loss = AngularPrototypicalLoss(per_speaker=3)
    got = loss(x)
    # by hand: speaker i's last utterance against every speaker's mean of the other two
    unit = torch.nn.functional.normalize(x, dim=-1).reshape(4, 3, 8)
    rows = []
    for i in range(4):
        cos = [float(unit[i, 2] @ torch.nn.functional.normalize(unit[j, :2].mean(0), dim=0)) for j in range(4)]
        logits = [10 * c - 5 for c in cos]
        rows.append(-logits[i] + math.log(sum(math.exp(v) for v in logits)))
    assert abs(got.item() - sum(rows) / 4) < 1e-5
    # grouped identical voices score better than shuffled ones
    voices = torch.randn(4, 1, 8).repeat(1, 3, 1) + 0.05 * torch.randn(4, 3, 8)
    with torch.no_grad():
        assert loss(voices.reshape(12, 8)) < loss(voices[torch.randperm(4)].transpose(0, 1).reshape(12, 8))
    with pytest.raises(ValueError, match="at least 2 utterances"):
        AngularPrototypicalLoss(per_speaker=1)


@pytest.mark.parametrize("name", ["amsoftmax", "aamsoftmax", "softmax"])
def test_head_under_bf16_autocast_is_fp32_with_finite_gradients_at_cosine_0999(name):
    """bf16 rounds 1 - 1e-7 to 1, where acos' derivative is infinite: heads must leave autocast."""
    head = HEADS.build(name, embed_dim=2, classes=3).train()
    head.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    angle = math.acos(0.999)
    x = torch.tensor([[math.cos(angle), math.sin(angle)]] * 4, requires_grad=True)  # target cosine 0.999
    labels = torch.zeros(4, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x.to(torch.bfloat16), labels)
    assert logits.dtype == torch.float32
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    if name == "aamsoftmax":  # the margin is applied exactly (fp32): cos(acos(0.999) + 0.2)
        assert logits[0, 0].item() == pytest.approx(30 * math.cos(angle + 0.2), abs=1e-3)
