"""Training throughput (a benchmark, not a test): crops/s of full training steps, front-end included.

    python bench/train.py [--config paper|FILE] [--set key.sub=value ...] [--batch 16] [--steps 3]
                          [--device cpu|cuda] [--compile] [--profile N]

Runs the given config's network and head, in the memory layout training uses (``train.channels_last``), on random
crops of the config's length already in memory, so it measures the compute side only; `bench/data.py` measures the
input pipeline alone and `bench/train_pipeline.py` both together.
On a GPU it uses what training uses there: TF32, cuDNN autotuning, the fused optimizer, no host sync per step.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ghostvlad.features import Spectrogram
from ghostvlad.models import HEADS, SpeakerEncoder
from ghostvlad.train.config import load_config
from ghostvlad.train.build import Classifier, build_optimizer, training_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper", help="A shipped config name or a YAML file.")
    parser.add_argument("--set", nargs="*", default=[], help="Config overrides (key.sub=value), as ghostvlad train's.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--classes", type=int, default=5994)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="Then profile --steps more steps and print the N operators of most CPU time.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (train.compile=true).")
    args = parser.parse_args()
    if args.device != "cpu":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "tf32"
    cfg = load_config(args.config, args.set)
    device = torch.device(args.device)
    samples = (cfg.data.frames - 1) * 160
    print(f"config {args.config}: {cfg.model.backbone.to_dict()} {cfg.model.pooling.to_dict()}, {cfg.head.name}, "
          f"{cfg.data.frames}-frame crops, batch {args.batch}, device {device}, torch threads {torch.get_num_threads()}"
          f"{', compiled' if args.compile else ''}")
    print(f"{'precision':>9} {'crops/s':>8} {'s/step':>7}")
    for precision in args.precision:
        torch.manual_seed(0)
        net = Classifier(SpeakerEncoder(cfg.model, cfg.frontend.n_freq),
                         HEADS.build(cfg.head.name, embed_dim=cfg.model.embed_dim, classes=args.classes)).to(device)
        net = training_layout(net, cfg).train()
        front = Spectrogram(cfg.frontend).to(device)
        opt = build_optimizer(net, cfg, fused=device.type == "cuda")
        forward = torch.compile(net) if args.compile else net
        waves = torch.randn(args.batch, samples, device=device) * 0.1
        labels = torch.randint(0, args.classes, (args.batch,), device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def step() -> None:
            with torch.no_grad():
                feats, _ = front(waves)
            with autocast:
                logits, extra = forward(feats, labels)
            loss = F.cross_entropy(logits, labels) + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3 if device.type == "cuda" else 1):  # warm-up (cuDNN autotuning, compilation)
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / args.steps
        print(f"{precision:>9} {args.batch / per_step:8.1f} {per_step:7.2f}")
        if args.profile:
            with torch.profiler.profile() as prof:
                for _ in range(args.steps):
                    step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


if __name__ == "__main__":
    main()
