"""The weight average: the documented recurrence, integer buffers copied, exact state round trip."""
import numpy as np
import torch
from torch import nn

from ghostvlad.train.averaging import WARMUP, WeightAverage


def test_average_follows_the_warmed_up_ema_recurrence():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(net, decay=0.9)
    expected = net[0].weight.detach().numpy().astype(np.float64).copy()
    for n in range(30):
        with torch.no_grad():
            net[0].weight.add_(torch.randn_like(net[0].weight))
            net[1].num_batches_tracked += 1
        average.update(net)
        decay = min(0.9, (1 + n) / (WARMUP + n))  # 0.1, 0.18, ... then 0.9
        expected = decay * expected + (1 - decay) * net[0].weight.detach().numpy()
    np.testing.assert_allclose(average.module[0].weight.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(average.module[0].weight.numpy(), net[0].weight.detach().numpy(), atol=1e-2)
    assert int(average.module[1].num_batches_tracked) == 30  # integer buffers follow the model
    assert not any(p.requires_grad for p in average.module.parameters())


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(1)
    net = nn.Linear(4, 4)
    a = WeightAverage(net, decay=0.99)
    for _ in range(5):
        with torch.no_grad():
            net.weight.mul_(1.1)
        a.update(net)
    b = WeightAverage(nn.Linear(4, 4), decay=0.99)
    b.load_state_dict(a.state_dict())
    assert b.updates == 5
    a.update(net)
    b.update(net)
    torch.testing.assert_close(b.module.weight, a.module.weight, rtol=0, atol=0)
