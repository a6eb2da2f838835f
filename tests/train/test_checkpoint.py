"""Training checkpoints (ghostvlad.train.checkpoint): a lossless round trip of data, one-line errors for missing
or damaged files, and no code ever run from a file (weights_only loading)."""
import math
import pathlib
from dataclasses import asdict

import pytest
import torch

from ghostvlad.train.checkpoint import CheckpointError, TrainState, load_checkpoint, save_checkpoint


def state() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"model": {"w": torch.randn(3, 4, generator=gen), "steps": torch.tensor(7), "mask": torch.tensor([True, False])},
            "optimizer": {"lr": 0.01, "betas": [0.9, 0.999], "param_groups": [{"params": [0, 1]}]},
            "progress": asdict(TrainState(epoch=2, step=5, global_step=45, best=0.125, loss_sum=3.5, loss_steps=5)),
            "fresh": asdict(TrainState()), "note": "résumé", "rng": torch.get_rng_state()}


def test_round_trip_keeps_every_value_and_type(tmp_path):
    saved = state()
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", saved)
    loaded = load_checkpoint(path)
    assert loaded.keys() == saved.keys() and loaded["optimizer"] == saved["optimizer"] and loaded["note"] == "résumé"
    for name, tensor in saved["model"].items():
        assert loaded["model"][name].dtype == tensor.dtype and torch.equal(loaded["model"][name], tensor)
    assert torch.equal(loaded["rng"], saved["rng"])
    assert TrainState(**loaded["progress"]) == TrainState(2, 5, 45, 0.125, 3.5, 5)
    assert loaded["fresh"]["best"] == math.inf  # the initial "no best yet" survives
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_saving_again_replaces_the_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"progress": asdict(TrainState(global_step=1))})
    save_checkpoint(path, {"progress": asdict(TrainState(global_step=2))})
    assert load_checkpoint(path)["progress"]["global_step"] == 2


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"^.*nope\.pt: checkpoint not found$"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_file_is_a_clear_one_line_error(tmp_path, keep):
    path = save_checkpoint(tmp_path / "checkpoint.pt", state())
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: unreadable checkpoint (") and "\n" not in message


class _Trap:
    """Unpickling this object runs code: it creates the file it names."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "payload": _Trap(marker)}, path)
    torch.load(path, weights_only=False)  # what an unsafe load would do: run the payload
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: unreadable checkpoint \(") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and not marker.exists()
