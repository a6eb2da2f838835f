"""The fault battery's library-level cases: every bad input one clear error, one bad item never costs the others,
no NaN/inf ever leaves the library (atomic writes: tests/test_fileio.py)."""
import errno
import os
import struct
import unicodedata

import numpy as np
import pytest
import soundfile as sf
import torch
from support.models import calibrated_tiny_model

from ghostvlad.audio import AudioError, load_audio
from ghostvlad.data.manifest import build_manifest, read_manifest
from ghostvlad.devices import DeviceError, resolve_device
from ghostvlad.errors import GhostvladError, describe
from ghostvlad.evaluate import embed_files
from ghostvlad.gallery import Gallery, GalleryError
from ghostvlad.inference import SpeakerModel
from ghostvlad.loading import load_model
from ghostvlad.modelfile import ModelFileError

RATE = 16000


def _voice(seed=0, seconds=1.0, peak=0.3):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wave = np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.3 * rng.standard_normal(t.size)
    return (peak * wave / np.abs(wave).max()).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return calibrated_tiny_model([_voice(s, 0.5) for s in range(4)])


# -- errors ------------------------------------------------------------------------------------------
def test_every_package_error_derives_from_one_root():
    import ghostvlad.convert.keras as keras
    import ghostvlad.data.espeak as espeak
    import ghostvlad.data.shards as shards
    import ghostvlad.data.trials as trials
    import ghostvlad.evaluate as evaluate
    import ghostvlad.gallery as gallery
    import ghostvlad.scoring.calibration as calibration
    import ghostvlad.train.checkpoint as checkpoint
    import ghostvlad.train.build as build
    from ghostvlad.data.manifest import ManifestError
    from ghostvlad.schema import ConfigError

    for cls in (AudioError, ModelFileError, keras.KerasConversionError, shards.DataShardError, trials.TrialsError,
                evaluate.EvalError, gallery.GalleryError, calibration.CalibrationError, checkpoint.CheckpointError,
                build.TrainError, ManifestError, ConfigError, DeviceError, espeak.EspeakUnavailable):
        assert issubclass(cls, GhostvladError) and issubclass(cls, ValueError), cls


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")


@pytest.mark.parametrize("exc, expected", [
    (IndexError(), "IndexError"),
    (RuntimeError(""), "RuntimeError"),
    (OSError(errno.EROFS, "Read-only file system", "/data/out.npz"), "/data/out.npz: Read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (ModelFileError("m: line one\nline two"), "m: line one line two"),
    (AudioError(os.fsdecode(b"/a/b\xff.wav"), "bad"), "/a/b\\xff.wav: bad"),
    (_Unprintable(), "_Unprintable: _Unprintable()"),
])
def test_describing_an_error_never_fails_and_is_one_line(exc, expected):
    assert describe(exc) == expected


# -- audio -------------------------------------------------------------------------------------------
def test_any_failure_reading_one_file_is_its_audio_error(tmp_path):
    raw = tmp_path / "a.raw"
    raw.write_bytes(_voice().tobytes())  # headerless: soundfile raises TypeError
    with pytest.raises(AudioError, match="a.raw: cannot read"):
        load_audio(raw)
    name = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav"))  # Latin-1 byte: not UTF-8
    sf.write(tmp_path / "tmp.wav", _voice(), RATE)
    os.rename(tmp_path / "tmp.wav", name)
    assert len(load_audio(name)) == RATE
    with pytest.raises(AudioError, match="not a file path"):
        load_audio(3.5)


def test_implausible_sample_rate_is_refused_before_resampling(tmp_path):
    path = tmp_path / "one_hz.wav"
    sf.write(path, _voice(seconds=2.0), RATE)
    data = bytearray(path.read_bytes())
    data[24:32] = struct.pack("<II", 1, 2)  # 1 Hz: 32,000 samples would become 512 million
    path.write_bytes(bytes(data))
    with pytest.raises(AudioError, match="sample rate 1 Hz is below the 4000 Hz minimum"):
        load_audio(path)
    from ghostvlad.audio import audio_duration, prepare_waveform

    with pytest.raises(AudioError, match="below the 4000 Hz minimum"):
        audio_duration(path)
    with pytest.raises(AudioError, match="below the 4000 Hz minimum"):
        prepare_waveform(_voice(), 2)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.99])
def test_truncated_ogg_vorbis_is_detected(tmp_path, keep):
    path = tmp_path / "talk.ogg"
    sf.write(path, np.tile(_voice(), 10), RATE)
    data = path.read_bytes()
    load_audio(path)  # whole file: fine
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(AudioError, match="truncated"):
        load_audio(path)


def test_huge_float_peak_is_scaled_and_embeds_like_the_normal_clip(tmp_path, model):
    wave = _voice(seconds=1.0)
    loud = tmp_path / "loud.wav"
    sf.write(loud, wave / np.abs(wave).max() * np.float32(3e38), RATE, subtype="FLOAT")
    sf.write(tmp_path / "normal.wav", wave, RATE, subtype="FLOAT")
    e_loud, e_normal = model.embed(loud), model.embed(tmp_path / "normal.wav")
    assert np.isfinite(e_loud).all()
    assert float(e_loud @ e_normal) > 0.999
    assert np.isfinite(model.score(loud, tmp_path / "normal.wav"))


def test_one_failing_item_costs_no_other(tmp_path, model, monkeypatch):
    paths = []
    for k in range(3):
        paths.append(str(tmp_path / f"c{k}.wav"))
        sf.write(paths[-1], _voice(k), RATE)
    raw = tmp_path / "x.raw"
    raw.write_bytes(_voice().tobytes())
    real_load = SpeakerModel.load_item

    def load(self, item, sample_rate):
        if str(item).endswith("c1.wav"):
            raise MemoryError()
        return real_load(self, item, sample_rate)

    monkeypatch.setattr(SpeakerModel, "load_item", load)
    results = {r.source: r for r in model.iter_embeddings([*paths, str(raw)])}
    assert results[paths[1]].error is not None and "out of memory" not in str(results[paths[0]].error or "")
    assert isinstance(results[paths[1]].error, AudioError) and "MemoryError" in str(results[paths[1]].error)
    assert isinstance(results[str(raw)].error, AudioError)
    for ok in (paths[0], paths[2]):  # the good clips embedded exactly as on their own
        assert results[ok].error is None and np.allclose(results[ok].embedding, model.embed(ok), atol=1e-5)


def test_non_finite_embeddings_never_leave_the_model(tmp_path, model, monkeypatch):
    sf.write(tmp_path / "a.wav", _voice(), RATE)
    sf.write(tmp_path / "b.wav", _voice(1), RATE)
    real = SpeakerModel.embed_waveforms

    def poisoned(self, waves):
        out = real(self, waves)
        out[0] = np.nan
        return out

    monkeypatch.setattr(SpeakerModel, "embed_waveforms", poisoned)
    with pytest.raises(AudioError, match="non-finite embedding"):
        model.embed(tmp_path / "a.wav")
    results = list(model.iter_embeddings([str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]))
    assert sum(r.error is not None for r in results) == 1 and sum(r.embedding is not None for r in results) == 1


# -- model files -------------------------------------------------------------------------------------
def test_model_files_with_bad_contents_are_one_line_errors(tmp_path, model):
    path = model.save(tmp_path / "m")
    config = path / "config.json"
    text = config.read_text()
    for bad, message in [("[1, 2]", "its config is a JSON list, not an object"), ('"x"', "JSON str"),
                         (text.replace('"version": 1', '"version": "1"'), "bad model format version '1'"),
                         (text.replace('"clusters": 4', '"clusters": "four"'), "encoder: pooling 'gvlad': clusters expected an integer"),
                         (text.replace('"threshold": null', '"threshold": "high"'), "threshold: expected a finite")]:
        config.write_text(bad)
        with pytest.raises(ModelFileError, match=message):
            load_model(path)
    config.write_text(text)
    state = {k: v.clone() for k, v in model.saved_encoder.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name][0] = float("nan")
    from safetensors.torch import save_file

    from ghostvlad.modelfile import WEIGHTS_NAME

    model.save(tmp_path / "nan")
    save_file(state, tmp_path / "nan" / WEIGHTS_NAME)  # written by other means: write_model refuses NaN weights
    with pytest.raises(ModelFileError, match=f"tensor '{name}' holds NaN or infinite values"):
        load_model(tmp_path / "nan")


def test_devices_that_do_not_exist_are_named_with_the_ones_that_do():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'banana'; available: cpu"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="device 'cuda' is not available on this machine; available: cpu"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="'cuda:99' is not available"):
        resolve_device("cuda:99")


# -- caches, galleries, manifests --------------------------------------------------------------------
def test_verify_cache_catches_content_replaced_with_size_and_mtime_kept(tmp_path, model):
    path = tmp_path / "a.wav"
    sf.write(path, _voice(0), RATE, subtype="FLOAT")
    cache = tmp_path / "cache"
    first = embed_files(model, [str(path)], cache).embeddings[str(path)]
    st = path.stat()
    sf.write(path, _voice(3), RATE, subtype="FLOAT")  # other speaker, same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    stale = embed_files(model, [str(path)], cache)
    assert stale.cached == 1 and np.array_equal(stale.embeddings[str(path)], first)  # documented limit
    checked = embed_files(model, [str(path)], cache, verify_cache=True)
    assert checked.cached == 0 and not np.allclose(checked.embeddings[str(path)], first)
    again = embed_files(model, [str(path)], cache, verify_cache=True)
    assert again.cached == 1 and np.array_equal(again.embeddings[str(path)], checked.embeddings[str(path)])


def test_cache_and_gallery_take_file_names_that_are_not_utf8(tmp_path, model):
    name = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"\xff.wav"))
    sf.write(tmp_path / "tmp.wav", _voice(), RATE)
    os.rename(tmp_path / "tmp.wav", name)
    assert embed_files(model, [name], tmp_path / "cache").computed == 1
    assert embed_files(model, [name], tmp_path / "cache").cached == 1
    with Gallery(tmp_path / "g.db", model) as gallery:
        assert gallery.enroll("x", [name]) == 1


def test_speaker_names_are_unicode_normalised(tmp_path, model):
    nfc, nfd = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José")
    assert nfc != nfd
    sf.write(tmp_path / "a.wav", _voice(0), RATE)
    sf.write(tmp_path / "b.wav", _voice(1), RATE)
    with Gallery(tmp_path / "g.db", model) as gallery:
        gallery.enroll(nfc, [tmp_path / "a.wav"])
        gallery.enroll(nfd, [tmp_path / "b.wav"])
        assert [(s.name, s.utterances) for s in gallery.speakers()] == [(nfc, 2)]
        assert gallery.speaker(nfd).utterances == 2
    files = []
    for k, who in enumerate([nfc, nfd]):
        files.append(tmp_path / "corpus" / who / "v" / f"{k}.wav")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        sf.write(files[-1], _voice(k), RATE)
    report = build_manifest(files, [nfc, nfd], tmp_path / "m.csv", workers=1)
    assert read_manifest(report.manifest).speaker_ids() == [nfc]


def test_manifest_keeps_file_names_that_are_not_utf8(tmp_path):
    folder = tmp_path / "id1" / "v"
    folder.mkdir(parents=True)
    sf.write(folder / "tmp.wav", _voice(), RATE)
    name = os.fsdecode(os.path.join(os.fsencode(folder), b"\xe9.wav"))
    os.rename(folder / "tmp.wav", name)
    raw = folder / "x.wav"
    raw.write_bytes(_voice().tobytes())  # headerless samples named .wav
    report = build_manifest([name, raw], ["id1", "id1"], tmp_path / "m.csv", workers=1)
    assert report.n_ok == 1 and report.bad[0][0] == str(raw)
    assert read_manifest(report.manifest).paths == [name]


def test_read_only_gallery_is_searched_read_only_and_refuses_writes_with_the_reason(tmp_path, model, monkeypatch):
    from ghostvlad.gallery import store as gallery_store

    sf.write(tmp_path / "a.wav", _voice(0), RATE)
    db = tmp_path / "g.db"
    with Gallery(db, model) as gallery:
        gallery.enroll("ann", [tmp_path / "a.wav"])
    # tests run as root, where permissions do not stop writes: the permission check is what is replaced
    monkeypatch.setattr(gallery_store, "_writable", lambda path: False)
    with Gallery(db, model) as gallery:
        assert gallery.read_only and [s.name for s in gallery.speakers()] == ["ann"]
        assert gallery.identify(tmp_path / "a.wav", 1)[0].name == "ann"
        with pytest.raises(GalleryError, match="g.db: cannot write the gallery: it is read-only"):
            gallery.enroll("bob", [tmp_path / "a.wav"])
    with pytest.raises(GalleryError, match="new.db: cannot create the gallery: no write permission on its folder"):
        with Gallery(tmp_path / "new.db", model) as gallery:
            gallery.enroll("bob", [tmp_path / "a.wav"])


def test_full_gallery_is_a_one_line_error_and_changes_nothing(tmp_path, model, monkeypatch):
    sf.write(tmp_path / "a.wav", _voice(0), RATE)
    db = tmp_path / "g.db"
    with Gallery(db, model) as gallery:
        gallery.enroll("ann", [tmp_path / "a.wav"])
    from ghostvlad.gallery.store import GalleryStore

    connect = GalleryStore._connect

    def full(self, create):  # a disk with no page left for this database
        conn = connect(self, create)
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        return conn

    monkeypatch.setattr(GalleryStore, "_connect", full)
    with Gallery(db, model) as gallery:
        with pytest.raises(GalleryError, match="g.db: cannot write the gallery \\(database or disk is full\\)"):
            gallery.add_embeddings({f"s{k}": np.eye(model.embed_dim, dtype=np.float32) for k in range(300)})
        assert [s.name for s in gallery.speakers()] == ["ann"]


def test_onnx_model_with_non_finite_weights_is_refused(tmp_path, model):
    import onnx
    from onnx import numpy_helper

    from ghostvlad.export import export_onnx

    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    tensor = next(t for t in proto.graph.initializer if numpy_helper.to_array(t).dtype.kind == "f"
                  and numpy_helper.to_array(t).size > 1)
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] = np.inf
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(proto, str(path))
    with pytest.raises(ModelFileError, match=f"tensor '{tensor.name}' holds NaN or infinite values"):
        load_model(path)


def test_non_finite_window_embeddings_are_that_files_error(tmp_path, model, monkeypatch):
    from ghostvlad.windows import iter_windows

    sf.write(tmp_path / "a.wav", _voice(0, 3.0), RATE)
    sf.write(tmp_path / "b.wav", _voice(1, 3.0), RATE)
    real = SpeakerModel.embed_waveforms
    calls = []

    def poisoned(self, waves):
        calls.append(len(waves))
        out = real(self, waves)
        if len(calls) == 1:
            out[0] = np.inf
        return out

    monkeypatch.setattr(SpeakerModel, "embed_waveforms", poisoned)
    results = list(iter_windows(model, [tmp_path / "a.wav", tmp_path / "b.wav"], 1.0, 0.5))
    assert "non-finite" in str(results[0].error) and np.isfinite(results[1].windows.embeddings).all()


def test_a_cache_that_cannot_be_written_costs_no_results(tmp_path, model, monkeypatch):
    import errno

    from ghostvlad import evaluate as ev

    paths = []
    for k in range(3):
        paths.append(str(tmp_path / f"{k}.wav"))
        sf.write(paths[-1], _voice(k), RATE)
    cache = tmp_path / "cache"
    assert embed_files(model, paths[:1], cache).computed == 1
    write = ev.atomic_write

    def full_disk(*args, **kwargs):  # every new cache part fails, as on a full or read-only disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ev, "atomic_write", full_disk)
    done = embed_files(model, paths, cache)
    assert (done.cached, done.computed, sorted(done.embeddings)) == (1, 2, sorted(paths))
    assert "cannot write the embedding cache" in done.cache_error and "No space left" in done.cache_error
    monkeypatch.setattr(ev, "atomic_write", write)
    assert embed_files(model, paths, cache).cached == 1  # nothing half-written
