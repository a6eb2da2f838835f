"""GPU checks (skipped without CUDA; `bench/gpu_check.sh` runs them): exact batching under both TF32 policies,
heads in fp32 under autocast, and short training runs of every head in bf16 and fp16."""
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.training import corpus  # noqa: F401  (fixtures)

from ghostvlad.models import HEADS

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture()
def tf32_policy():
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


@pytest.mark.parametrize("policy", ["ieee", "tf32"])
def test_padded_batch_equals_alone_on_gpu(policy, tf32_policy):
    from support.models import calibrated_tiny_model

    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = policy
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 23456, 40000)]
    model = calibrated_tiny_model([w[:16000] for w in waves], device="cuda")
    batched = model.embed_waveforms(waves)
    alone = np.stack([model.embed_waveforms([w])[0] for w in waves])
    tolerance = 1e-5 if policy == "ieee" else 5e-3  # TF32: 10-bit mantissas, kernels differ by batch size
    np.testing.assert_allclose(batched, alone, rtol=0, atol=tolerance)


@pytest.mark.parametrize("name", ["softmax", "amsoftmax", "aamsoftmax"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_heads_are_fp32_under_gpu_autocast(name, dtype):
    head = HEADS.build(name, embed_dim=2, classes=3).cuda().train()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    angle = float(np.arccos(0.999))
    x = torch.tensor([[np.cos(angle), np.sin(angle)]] * 4, device="cuda", requires_grad=True)
    labels = torch.zeros(4, dtype=torch.long, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        logits = head(x.to(dtype), labels)
    assert logits.dtype == torch.float32
    F.cross_entropy(logits, labels).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", ["softmax", "amsoftmax", "aamsoftmax"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_on_gpu(corpus, tmp_path, name, precision):  # noqa: F811
    from ghostvlad.train.config import load_config
    from ghostvlad.train.loop import Trainer

    manifest, config = corpus
    cfg = load_config(config, [f"head.name={name}", f"train.precision={precision}", "train.channels_last=true"])
    trainer = Trainer(cfg, manifest, tmp_path / "run", device="cuda")
    steps = 2 if precision == "bf16" else 20
    assert trainer.run(max_steps=steps).global_step == steps
    skipped = [r["skipped"] for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open()) if r["step"]]
    if precision == "bf16":
        assert skipped == ["0", "0"]
    else:  # fp16: the loss scaler starts at 2**16 and halves on each overflow until the gradients fit (with the
        # margin heads' scale of 30 about 9 of the first 11 steps skip on this tiny model, on the CPU too); then
        # every step is taken
        assert skipped[-8:] == ["0"] * 8, skipped
        assert trainer.parts.scaler.get_scale() == 2.0 ** 16 / 2 ** skipped.count("1")
    assert all(torch.isfinite(t).all() for t in trainer.parts.net.state_dict().values() if t.is_floating_point())
