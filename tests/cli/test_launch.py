"""What the CLI decides before running a command: the allocator settings, and the default device and precision."""
import os
import subprocess
import sys

import pytest
import torch

from ghostvlad import precision
from ghostvlad.cli.common import resolve_auto


ALLOCATION = """
import ctypes, os, sys
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
SpeakerModel(SpeakerEncoder(EncoderConfig(width=0.125, descriptor_dim=16, embed_dim=8, clusters=2,
                                          ghost_clusters=1)), FrontEndConfig())  # a CPU model, as the CLI makes
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 << 20)  # an activation-sized buffer: mmapped (and unmapped when freed) by default
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")
def test_a_cpu_model_keeps_large_buffers_in_the_heap_in_process():
    """What the CLI used to re-execute itself under GLIBC_TUNABLES for, done by the API in the same process."""
    def mapped(**env) -> int:
        base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "GHOSTVLAD_NO_MALLOPT")}
        done = subprocess.run([sys.executable, "-c", ALLOCATION], env={**base, **env}, capture_output=True,
                              text=True)
        if "mallinfo2" in done.stderr:
            pytest.skip("not glibc >= 2.33 (no mallinfo2)")
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    assert mapped() == 0
    assert mapped(GHOSTVLAD_NO_MALLOPT="1") >= 16 << 20  # glibc's defaults: the block is its own mapping


def test_auto_device_and_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_auto("auto", "auto") == ("cpu", "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(precision, "native_bf16", lambda device: device.type == "cuda")
    assert resolve_auto("auto", "auto") == ("cuda:3", "bf16")
    assert resolve_auto("cpu", "bf16") == ("cpu", "bf16")
    assert resolve_auto("auto", "fp32") == ("cuda:3", "fp32")
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)  # a CPU with bf16 kernels: still fp32
    assert resolve_auto("cpu", "auto") == ("cpu", "fp32")
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)  # a GPU before Ampere: fp32, not emulation
    assert resolve_auto("auto", "auto") == ("cuda:3", "fp32")


@pytest.mark.parametrize("args", [["embed", "--device", "cpu"]])
def test_embed_states_where_it_runs(args, tmp_path):
    import numpy as np
    import soundfile as sf
    from support.evaluate import tiny_model
    from typer.testing import CliRunner

    from ghostvlad.cli import app

    tiny_model().save(tmp_path / "m")
    sf.write(tmp_path / "a.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    result = CliRunner().invoke(app, [*args, "--model", str(tmp_path / "m"), str(tmp_path / "a.wav"), "--out",
                                      str(tmp_path / "e.npz")])
    assert result.exit_code == 0, result.output
    assert "embedding on cpu, fp32" in result.output
