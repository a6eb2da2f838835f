"""Launch environments (torchrun, SLURM) and validation sharded across 2 gloo ranks."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from ghostvlad.train import distributed
from ghostvlad.train.config import load_config
from ghostvlad.train.distributed import DistError, launch_environment

pytestmark = pytest.mark.slow


def test_torchrun_then_slurm_variables_or_a_clear_refusal():
    assert launch_environment({}) == (0, 1, 0, 1)
    assert launch_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == (3, 4, 1, 2)
    slurm = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
             "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
    with pytest.raises(DistError, match="srun started 8 tasks but MASTER_ADDR and MASTER_PORT are not set"):
        launch_environment(slurm)
    assert launch_environment({**slurm, "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}) == (5, 8, 1, 4)
    # a batch script (no job step) that runs one process is a single run, whatever --ntasks says
    assert launch_environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) == (0, 1, 0, 1)


def test_plain_cuda_means_this_ranks_gpu(monkeypatch):
    """``--device cuda`` (no index) trains on the local rank's GPU: torch.cuda.set_device refuses an unindexed
    device (seen on an H200: every single-GPU ``train --device cuda`` failed)."""
    chosen = []
    monkeypatch.setattr(distributed, "resolve_device", torch.device)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.setup("cuda").device == torch.device("cuda", 0) and chosen == [torch.device("cuda", 0)]
    assert distributed.setup("cuda:1").device == torch.device("cuda", 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _validate_rank(rank: int, port: int, config_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from ghostvlad.models import SpeakerEncoder
    from ghostvlad.train.loop import _validate

    config = load_config(config_path)
    info = distributed.setup("cpu", timeout=120)
    torch.manual_seed(0)
    try:
        found = _validate(SpeakerEncoder(config.model), config, info)
        Path(out, f"rank{rank}.json").write_text(json.dumps(found))
    finally:
        distributed.teardown()


def test_validation_sharded_over_two_ranks_equals_one_process(tmp_path):
    import numpy as np
    import soundfile as sf
    from support.training import TINY

    from ghostvlad.models import SpeakerEncoder
    from ghostvlad.train.loop import _validate

    rng = np.random.default_rng(0)
    rel = []
    for s in range(3):
        for u in range(3):
            t = np.arange(int((0.8 + 0.2 * u) * 16000)) / 16000
            path = tmp_path / "wav" / f"s{s}" / f"{u}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (0.3 * np.sin(2 * np.pi * (150 + 80 * s) * t) + rng.normal(0, 0.05, t.size)).astype(np.float32), 16000)
            rel.append(f"s{s}/{u}.wav")
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{int(a[:2] == b[:2])} {a} {b}\n" for i, a in enumerate(rel) for b in rel[i + 1:]))
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "valid": {"trials": str(trials), "wav_root": str(tmp_path / "wav")}}))
    config = load_config(config_path)
    torch.manual_seed(0)
    alone = _validate(SpeakerEncoder(config.model), config, distributed.DistInfo(0, 1, 0, torch.device("cpu")))
    mp.spawn(_validate_rank, args=(_free_port(), str(config_path), str(tmp_path)), nprocs=2)
    eer, threshold = json.loads((tmp_path / "rank0.json").read_text())
    assert json.loads((tmp_path / "rank1.json").read_text()) is None  # rank 0 scores
    assert eer == pytest.approx(alone[0], abs=1e-9) and threshold == pytest.approx(alone[1], abs=1e-5)


def _check_folder_rank(rank: int, port: int, root: str, shared: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    info = distributed.setup("cpu", timeout=60)
    folder = Path(root, "shared" if shared else f"node{rank}", "run")  # not shared: each "node" has its own disk
    try:
        distributed.check_shared_folder(folder, info)
        outcome = "ok"
    except DistError as exc:
        outcome = str(exc)
    finally:
        distributed.teardown()
    Path(root, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.parametrize("shared", [True, False])
def test_ranks_that_cannot_see_rank0s_run_folder_all_fail_clearly(tmp_path, shared):
    mp.spawn(_check_folder_rank, args=(_free_port(), str(tmp_path), shared), nprocs=2)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    if shared:
        assert outcomes == ["ok", "ok"] and not list((tmp_path / "shared" / "run").iterdir())  # probe removed
    else:
        assert "rank 1 on " in outcomes[0] and "cannot see the run folder rank 0 writes" in outcomes[0]
        assert "another rank cannot see the run folder" in outcomes[1]
