"""What the CLI decides before running a command: the allocator re-exec, and the default device and precision."""
import sys
from pathlib import Path

import pytest
import torch

from ghostvlad.cli.common import resolve_auto, wants_tunables


def test_glibc_reexec_only_for_single_process_cpu_inference(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert wants_tunables(["embed", "--model", "m", "a.wav", "--out", "e.npz"])
    assert wants_tunables(["eval", "--device", "cpu", "--model", "m"])
    assert not wants_tunables(["train", "--config", "paper"])  # training ranks keep glibc's defaults
    assert not wants_tunables(["embed", "--device", "cuda", "--model", "m"])
    assert not wants_tunables(["embed", "--device=cuda:1", "--model", "m"])
    assert not wants_tunables(["prepare", "--root", "x"])
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun
    assert not wants_tunables(["embed", "--model", "m"])


def test_auto_device_and_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_auto("auto", "auto") == ("cpu", "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_auto("auto", "auto") == ("cuda:3", "bf16")
    assert resolve_auto("cpu", "bf16") == ("cpu", "bf16")
    assert resolve_auto("auto", "fp32") == ("cuda:3", "fp32")


@pytest.mark.parametrize("args", [["embed", "--device", "cpu"]])
def test_embed_states_where_it_runs(args, tmp_path):
    import numpy as np
    import soundfile as sf
    from typer.testing import CliRunner

    from ghostvlad.cli import app
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from test_evaluate import tiny_model

    tiny_model().save(tmp_path / "m")
    sf.write(tmp_path / "a.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    result = CliRunner().invoke(app, [*args, "--model", str(tmp_path / "m"), str(tmp_path / "a.wav"), "--out",
                                      str(tmp_path / "e.npz")])
    assert result.exit_code == 0, result.output
    assert "embedding on cpu, fp32" in result.output
