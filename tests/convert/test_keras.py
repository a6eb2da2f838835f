"""Keras weights.h5 -> SpeakerEncoder: parity with an independent NumPy forward pass, config inference, errors."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from support.keras import write_keras_h5
from support.numpy_reference import keras_embed

from ghostvlad.convert.keras import KerasConversionError, infer_keras_config, read_keras_encoder
from ghostvlad.models.encoder import EncoderConfig

# design/original.md section 7, verbatim: layer_names of the released eval model (resnet34s, gvlad).
SPEC_LAYER_NAMES = """
0 `input` · 1 `conv1_1/3x3_s1`* · 2 `conv1_1/3x3_s1/bn`* · 3 `activation_1` · 4 `max_pooling2d_1` · 5 `conv2_a_1x1_reduce`*
6 `conv2_a_1x1_reduce/bn`* · 7 `activation_2` · 8 `conv2_a_3x3`* · 9 `conv2_a_3x3/bn`* · 10 `activation_3` · 11 `conv2_a_1x1_increase`*
12 `conv2_a_1x1_proj`* · 13 `conv2_a_1x1_increase/bn`* · 14 `conv2_a_1x1_proj/bn`* · 15 `add_1` · 16 `activation_4` · 17 `conv2_b_1x1_reduce`*
18 `conv2_b_1x1_reduce/bn`* · 19 `activation_5` · 20 `conv2_b_3x3`* · 21 `conv2_b_3x3/bn`* · 22 `activation_6` · 23 `conv2_b_1x1_increase`*
24 `conv2_b_1x1_increase/bn`* · 25 `add_2` · 26 `activation_7` · 27 `conv3_a_1x1_reduce`* · 28 `conv3_a_1x1_reduce/bn`* · 29 `activation_8`
30 `conv3_a_3x3`* · 31 `conv3_a_3x3/bn`* · 32 `activation_9` · 33 `conv3_a_1x1_increase`* · 34 `conv3_a_1x1_proj`* · 35 `conv3_a_1x1_increase/bn`*
36 `conv3_a_1x1_proj/bn`* · 37 `add_3` · 38 `activation_10` · 39 `conv3_b_1x1_reduce`* · 40 `conv3_b_1x1_reduce/bn`* · 41 `activation_11`
42 `conv3_b_3x3`* · 43 `conv3_b_3x3/bn`* · 44 `activation_12` · 45 `conv3_b_1x1_increase`* · 46 `conv3_b_1x1_increase/bn`* · 47 `add_4`
48 `activation_13` · 49 `conv3_c_1x1_reduce`* · 50 `conv3_c_1x1_reduce/bn`* · 51 `activation_14` · 52 `conv3_c_3x3`* · 53 `conv3_c_3x3/bn`*
54 `activation_15` · 55 `conv3_c_1x1_increase`* · 56 `conv3_c_1x1_increase/bn`* · 57 `add_5` · 58 `activation_16` · 59 `conv4_a_1x1_reduce`*
60 `conv4_a_1x1_reduce/bn`* · 61 `activation_17` · 62 `conv4_a_3x3`* · 63 `conv4_a_3x3/bn`* · 64 `activation_18` · 65 `conv4_a_1x1_increase`*
66 `conv4_a_1x1_proj`* · 67 `conv4_a_1x1_increase/bn`* · 68 `conv4_a_1x1_proj/bn`* · 69 `add_6` · 70 `activation_19` · 71 `conv4_b_1x1_reduce`*
72 `conv4_b_1x1_reduce/bn`* · 73 `activation_20` · 74 `conv4_b_3x3`* · 75 `conv4_b_3x3/bn`* · 76 `activation_21` · 77 `conv4_b_1x1_increase`*
78 `conv4_b_1x1_increase/bn`* · 79 `add_7` · 80 `activation_22` · 81 `conv4_c_1x1_reduce`* · 82 `conv4_c_1x1_reduce/bn`* · 83 `activation_23`
84 `conv4_c_3x3`* · 85 `conv4_c_3x3/bn`* · 86 `activation_24` · 87 `conv4_c_1x1_increase`* · 88 `conv4_c_1x1_increase/bn`* · 89 `add_8`
90 `activation_25` · 91 `conv5_a_1x1_reduce`* · 92 `conv5_a_1x1_reduce/bn`* · 93 `activation_26` · 94 `conv5_a_3x3`* · 95 `conv5_a_3x3/bn`*
96 `activation_27` · 97 `conv5_a_1x1_increase`* · 98 `conv5_a_1x1_proj`* · 99 `conv5_a_1x1_increase/bn`* · 100 `conv5_a_1x1_proj/bn`* · 101 `add_9`
102 `activation_28` · 103 `conv5_b_1x1_reduce`* · 104 `conv5_b_1x1_reduce/bn`* · 105 `activation_29` · 106 `conv5_b_3x3`* · 107 `conv5_b_3x3/bn`*
108 `activation_30` · 109 `conv5_b_1x1_increase`* · 110 `conv5_b_1x1_increase/bn`* · 111 `add_10` · 112 `activation_31` · 113 `conv5_c_1x1_reduce`*
114 `conv5_c_1x1_reduce/bn`* · 115 `activation_32` · 116 `conv5_c_3x3`* · 117 `conv5_c_3x3/bn`* · 118 `activation_33` · 119 `conv5_c_1x1_increase`*
120 `conv5_c_1x1_increase/bn`* · 121 `add_11` · 122 `activation_34` · 123 `mpool2` · 124 `x_fc`* · 125 `gvlad_center_assignment`*
126 `gvlad_pool`* · 127 `fc6`* · 128 `lambda_1`
"""
SPEC_ENTRIES = re.findall(r"(\d+) `([^`]+)`(\*?)", SPEC_LAYER_NAMES)

TINY = dict(backbone="resnet34s", width=0.125, pooling="gvlad", clusters=4, ghost_clusters=2,
            descriptor_dim=32, embed_dim=24)
CASES = {  # name: (writer arguments, frame counts to embed)
    "s-gvlad": (TINY, (97,)),
    # width 0.3: a 19-channel stem, and 19 / 64 does not reproduce the other channel counts
    "s-vlad": ({**TINY, "pooling": "vlad", "width": 0.3, "clusters": 3, "ghost_clusters": 0}, (64,)),
    "s-tap": ({**TINY, "pooling": "tap", "clusters": 0, "ghost_clusters": 0, "embed_dim": 16}, (80,)),
    "l-gvlad": ({**TINY, "backbone": "resnet34l", "clusters": 3, "ghost_clusters": 1}, (96, 97)),
}
LAYOUTS = [(layout, kind) for layout in ("root", "model_weights") for kind in ("bytes", "str")]


def spectrogram(frames: int, seed: int = 1) -> np.ndarray:
    """A normalised spectrogram (257, T): zero mean and unit std per frame, as the front-end produces."""
    x = np.abs(np.random.default_rng(seed).standard_normal((257, frames)))
    return (x - x.mean(0)) / (x.std(0) + 1e-5)


def torch_embed(encoder, spec: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder.embed(torch.tensor(spec, dtype=torch.float32)[None])[0].double().numpy()


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-4
    assert ours @ reference / np.linalg.norm(ours) / np.linalg.norm(reference) > 0.99999


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "weights.h5"
    write_keras_h5(path, **TINY)
    return path


@pytest.fixture
def tiny_copy(tmp_path, tiny_file) -> Path:
    """A private copy of the tiny resnet34s gvlad file, free to break."""
    return Path(shutil.copy(tiny_file, tmp_path / "w.h5"))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, list[np.ndarray]]:
    """NumPy embeddings per case (the weights depend only on the writer's seed, not on layout or strings)."""
    folder, cache = tmp_path_factory.mktemp("reference"), {}
    for name, (args, frames) in CASES.items():
        weights = write_keras_h5(folder / f"{name}.h5", **args)
        cache[name] = [keras_embed(weights, spectrogram(t), backbone_name=args["backbone"], pooling=args["pooling"])
                       for t in frames]
    return cache


@pytest.mark.parametrize("layout,string_kind", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_converted_encoder_matches_numpy_reference(tmp_path, references, case, layout, string_kind):
    args, frames = CASES[case]
    path = tmp_path / "weights.h5"
    write_keras_h5(path, **args, layout=layout, string_kind=string_kind)
    encoder, info = read_keras_encoder(path)
    assert not encoder.training
    assert info["config"] == EncoderConfig.from_dict(args) == infer_keras_config(path)
    assert info["layout"] == layout
    assert info["keras_version"] == ("2.2.4" if string_kind == "bytes" else "2.21.0")
    assert info["skipped_layers"] == []
    for t, reference in zip(frames, references[case]):
        assert_close(torch_embed(encoder, spectrogram(t)), reference)


def test_layer_names_follow_the_released_file(tiny_file):
    with h5py.File(tiny_file) as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        weighted = [n for n in names if len(f[n].attrs["weight_names"])]
        assert isinstance(f.attrs["layer_names"][0], np.bytes_)
        assert f["conv1_1/3x3_s1/bn"].attrs["weight_names"][3] == b"conv1_1/3x3_s1/bn/moving_variance:0"
        assert "conv1_1/3x3_s1/bn/conv1_1/3x3_s1/bn/gamma:0" in f  # names with '/' nest the groups
    assert [int(i) for i, _, _ in SPEC_ENTRIES] == list(range(129))
    assert names == [name for _, name, _ in SPEC_ENTRIES]
    assert weighted == [name for _, name, star in SPEC_ENTRIES if star]


def test_resnet34l_batch_of_odd_and_even_lengths(tmp_path, references):
    args, frames = CASES["l-gvlad"]
    write_keras_h5(tmp_path / "w.h5", **args)
    encoder, _ = read_keras_encoder(tmp_path / "w.h5")
    batch = np.zeros((len(frames), 257, max(frames)), dtype=np.float32)
    for i, t in enumerate(frames):
        batch[i, :, :t] = spectrogram(t)
    with torch.no_grad():
        out = encoder.embed(torch.from_numpy(batch), torch.tensor(frames)).double().numpy()
    for row, reference in zip(out, references["l-gvlad"]):
        assert_close(row, reference)


def test_training_checkpoint_skips_prediction(tmp_path, references):
    path = tmp_path / "w.h5"
    write_keras_h5(path, **TINY, layout="model_weights", with_prediction=True)
    with h5py.File(path) as f:
        assert f["model_weights"].attrs["layer_names"][-1] == b"prediction"
    encoder, info = read_keras_encoder(path, **EncoderConfig(**TINY).flat())
    assert info["skipped_layers"] == ["prediction"]
    assert (info["layer_count"], info["weighted_layer_count"]) == (129, 81)
    assert_close(torch_embed(encoder, spectrogram(97)), references["s-gvlad"][0])


@pytest.mark.parametrize("expected,message", [
    ({"clusters": 12}, "gvlad_center_assignment: the file has 6 clusters (4 + 2 ghost), 12 + 2 were asked"),
    ({"ghost_clusters": 1}, "gvlad_center_assignment: the file has 6 clusters (4 + 2 ghost), 4 + 1 were asked"),
    ({"pooling": "vlad"}, "gvlad_center_assignment: the file has gvlad pooling, vlad was asked"),
    ({"backbone": "resnet34l"}, "conv2_c_1x1_reduce: the file has a resnet34s backbone (without conv2_c_* layers)"),
    ({"width": 0.25}, "conv1_1/3x3_s1: the file has width 0.125 (8 channels here), width 0.25 was asked (16"),
    ({"descriptor_dim": 512}, "x_fc: the file has 32 descriptor channels, 512 were asked"),
    ({"embed_dim": 512}, "fc6: the file has 24 embedding units, 512 were asked"),
])
def test_expected_config_mismatch_names_the_layer(tiny_file, expected, message):
    with pytest.raises(KerasConversionError) as err:
        read_keras_encoder(tiny_file, **expected)
    assert str(err.value).startswith(f"{tiny_file}: {message}")
    assert "\n" not in str(err.value)


def test_expected_config_vlad_and_unknown_field(tmp_path):
    path = tmp_path / "w.h5"
    write_keras_h5(path, **CASES["s-vlad"][0])
    with pytest.raises(KerasConversionError, match="vlad_center_assignment: the file has 3 clusters, 8 were asked"):
        read_keras_encoder(path, clusters=8)
    _, info = read_keras_encoder(path, width=0.3, pooling="vlad", ghost_clusters=0)
    assert info["config"].backbone.args["width"] == 0.3
    with pytest.raises(KerasConversionError, match=r"the file has 3 clusters \(3 \+ 0 ghost\), 3 \+ 2 were asked"):
        read_keras_encoder(path, ghost_clusters=2)  # the flag states an expectation: NetVLAD has no ghosts
    with pytest.raises(TypeError, match="unknown EncoderConfig field"):
        read_keras_encoder(path, heads=3)


def test_tap_file_and_chunked_layer_names(tmp_path, tiny_copy):
    path = tmp_path / "tap.h5"
    write_keras_h5(path, **CASES["s-tap"][0])
    with pytest.raises(KerasConversionError, match="gvlad_center_assignment: the file has tap pooling, gvlad was"):
        read_keras_encoder(path, pooling="gvlad")
    assert read_keras_encoder(path, clusters=0)[1]["config"].pooling.args == {}
    with pytest.raises(KerasConversionError, match="tap pooling \\(no clusters\\), 8 \\+ 0 clusters were asked"):
        read_keras_encoder(path, clusters=8)
    with h5py.File(tiny_copy, "a") as f:  # Keras splits attributes above 64 KB into name0, name1, ...
        names = f.attrs["layer_names"]
        del f.attrs["layer_names"]
        f.attrs["layer_names0"], f.attrs["layer_names1"] = names[:50], names[50:]
    assert read_keras_encoder(tiny_copy)[1]["layer_count"] == 129


def _edit(path: Path, edit) -> None:
    with h5py.File(path, "a") as f:
        edit(f)


def _drop_layer(f: h5py.File, layer: str) -> None:
    f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n.decode() != layer])
    del f[layer]


def _add_layer(f: h5py.File, layer: str) -> None:
    f.attrs["layer_names"] = np.array([*f.attrs["layer_names"], layer.encode()])
    f.create_group(layer).attrs["weight_names"] = np.array([f"{layer}/kernel:0".encode()])
    f[layer].create_dataset(f"{layer}/kernel:0", data=np.zeros((1, 1, 4, 4), np.float32))


def _replace(f: h5py.File, dataset: str, data: np.ndarray) -> None:
    del f[dataset]
    f.create_dataset(dataset, data=data)


def _reshape(f: h5py.File, dataset: str, shape: tuple[int, ...]) -> None:
    _replace(f, dataset, np.zeros(shape, np.float32))


@pytest.mark.parametrize("edit,message", [
    (lambda f: _drop_layer(f, "conv3_b_3x3/bn"), "missing layer 'conv3_b_3x3/bn'"),
    (lambda f: f.__delitem__("conv3_b_3x3"), "layer 'conv3_b_3x3' is listed in layer_names but has no group"),
    (lambda f: _drop_layer(f, "gvlad_pool"), "missing layer 'gvlad_pool'"),
    (lambda f: _reshape(f, "conv4_b_3x3/conv4_b_3x3/kernel:0", (3, 3, 17, 16)),
     "conv4_b_3x3: 'kernel' has shape (3, 3, 17, 16) in the file, the inferred model needs (3, 3, 16, 16)"),
    (lambda f: _reshape(f, "gvlad_pool/gvlad_pool/centers:0", (6, 31)),
     "gvlad_pool: 'centers' has shape (6, 31) in the file, the inferred model needs (6, 32)"),
    (lambda f: _reshape(f, "fc6/fc6/kernel:0", (100, 24)), "fc6: 100 inputs are not k x 32 descriptor channels"),
    (lambda f: _reshape(f, "conv3_a_3x3/conv3_a_3x3/kernel:0", (3, 3, 12, 13)),
     "conv3_a_3x3: 13 output channels do not fit the 8-channel stem"),
    (lambda f: _add_layer(f, "conv6_a_1x1_reduce"),
     "conv6_a_1x1_reduce: layer with weights that is not part of a resnet34s gvlad encoder"),
    (lambda f: f["x_fc"].__delitem__("x_fc/bias:0"),
     "x_fc: weight 'x_fc/bias:0' is listed in weight_names but missing"),
    (lambda f: f.attrs.__delitem__("layer_names"), "no 'layer_names' attribute at the root or in 'model_weights'"),
    (lambda f: _replace(f, "x_fc/x_fc/bias:0", np.array([b"x"] * 4)), "x_fc: weight 'x_fc/bias:0' holds |S1 values"),
    (lambda f: _replace(f, "x_fc/x_fc/bias:0", np.full(4, np.nan, np.float32)),
     "x_fc: weight 'x_fc/bias:0' holds NaN or infinite values"),
])
def test_broken_files_fail_with_one_line(tiny_copy, edit, message):
    _edit(tiny_copy, edit)
    with pytest.raises(KerasConversionError) as err:
        read_keras_encoder(tiny_copy)
    assert str(err.value).startswith(f"{tiny_copy}: {message}")
    assert "\n" not in str(err.value)


def test_not_a_keras_file(tmp_path):
    text = tmp_path / "weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(KerasConversionError, match=f"^{re.escape(str(text))}: not an HDF5 file$"):
        infer_keras_config(text)
    with pytest.raises(KerasConversionError, match="no such file"):
        read_keras_encoder(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(KerasConversionError, match="not a Keras weights file"):
        read_keras_encoder(tmp_path / "empty.h5")


def test_released_configuration(tmp_path):
    """The full released model: resnet34s, width 1, gvlad 8 + 2, 512 / 512 (section 3.5 counts)."""
    path = tmp_path / "weights.h5"
    weights = write_keras_h5(path, backbone="resnet34s", width=1.0, pooling="gvlad", clusters=8, ghost_clusters=2,
                             descriptor_dim=512, embed_dim=512)
    assert sum(w.size for ws in weights.values() for w in ws) == 7_678_410
    encoder, info = read_keras_encoder(path, clusters=8, ghost_clusters=2)
    assert info["config"] == EncoderConfig()
    assert (info["layer_count"], info["weighted_layer_count"]) == (129, 80)
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == 7_664_394
    spec = spectrogram(40)
    reference = keras_embed(weights, spec, backbone_name="resnet34s", pooling="gvlad")
    assert_close(torch_embed(encoder, spec), reference)
