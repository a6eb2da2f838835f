"""The fault battery through the CLI: one line per problem (``error: path: reason``), never a traceback; good items
survive bad ones; --debug shows the traceback of an unexpected error."""
import errno
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from ghostvlad import fileio
from ghostvlad.cli import app
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.loading import load_model
from ghostvlad.models import EncoderConfig, SpeakerEncoder

runner = CliRunner()


def one_line_error(res, *expected: str) -> str:
    """The single error line of a failed command, checked to contain ``expected``."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.output
    text = " ".join(res.output[res.output.index("error:"):].split())
    for part in expected:
        assert part in text, (part, text)
    return text


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    enc = SpeakerEncoder(EncoderConfig(width=0.125, clusters=4, ghost_clusters=2, descriptor_dim=16, embed_dim=12))
    return SpeakerModel(enc, FrontEndConfig()).save(tmp_path_factory.mktemp("m") / "model")


def clip(path, seed=0, seconds=1.0, scale=0.1, subtype=None):
    rng = np.random.default_rng(seed)
    wave = rng.standard_normal(int(16000 * seconds))
    sf.write(path, (scale * wave / np.abs(wave).max()).astype(np.float32), 16000, subtype=subtype)
    return str(path)


def test_embed_keeps_good_files_past_any_bad_one(tmp_path, model_dir):
    good = [clip(tmp_path / "a.wav", 0), clip(tmp_path / "b.wav", 1)]
    raw = tmp_path / "c.raw"
    raw.write_bytes(np.zeros(16000, np.float32).tobytes())  # headerless: soundfile raises TypeError
    latin = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"d\xe9.wav"))
    os.rename(clip(tmp_path / "tmp.wav", 2), latin)
    folder = tmp_path / "e.wav"
    folder.mkdir()
    out = tmp_path / "emb.npz"
    res = runner.invoke(app, ["embed", good[0], str(raw), latin, str(folder), good[1], "-m", str(model_dir),
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "c.raw: cannot read" in res.output and "e.wav: not a regular" in res.output
    assert "2 of 5 files failed" in res.output
    data = np.load(out)
    assert list(data["paths"]) == [good[0], latin, good[1]] and np.isfinite(data["embeddings"]).all()


def test_list_takes_one_exact_path_per_line(tmp_path, model_dir):
    spaced = clip(tmp_path / "my clip  two.wav", 0)
    plain = clip(tmp_path / "plain.wav", 1)
    listing = tmp_path / "files.txt"
    listing.write_text(f"{spaced}\n# recordings\n\n   \n{plain}\n", encoding="utf-8-sig")  # a BOM, as some editors write
    out = tmp_path / "emb.npz"
    res = runner.invoke(app, ["embed", "--list", str(listing), "-m", str(model_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert list(np.load(out)["paths"]) == [spaced, plain]
    res = runner.invoke(app, ["embed", "--help"])
    assert "exactly (spaces kept)" in " ".join(w for w in res.output.split() if w != "│")


@pytest.mark.parametrize("failure", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_unwritable_output_is_one_line_naming_it(tmp_path, model_dir, monkeypatch, failure):
    a = clip(tmp_path / "a.wav")

    def refuse(*args, **kwargs):  # as the kernel would: tests run as root, where chmod does not stop writes
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    out = tmp_path / "emb.npz"
    res = runner.invoke(app, ["embed", a, "-m", str(model_dir), "-o", str(out)])
    one_line_error(res, f"{out}: {os.strerror(failure)}")
    res = runner.invoke(app, ["diarize", a, "-m", str(model_dir), "-o", str(tmp_path / "a.rttm"), "-n", "1"])
    one_line_error(res, f"{tmp_path / 'a.rttm'}: {os.strerror(failure)}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_an_existing_file_where_a_folder_is_expected(tmp_path, model_dir):
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, ["embed", clip(tmp_path / "a.wav"), "-m", str(model_dir),
                              "-o", str(tmp_path / "file" / "emb.npz")])
    one_line_error(res, str(tmp_path / "file"))


def test_internal_errors_point_to_debug_which_shows_the_traceback(tmp_path, model_dir, monkeypatch):
    def broken(self, waves):
        raise RuntimeError("")  # an empty message must not break the report

    monkeypatch.setattr(SpeakerModel, "embed_waveforms", broken)
    args = ["verify", clip(tmp_path / "a.wav", 0), clip(tmp_path / "b.wav", 1), "-m", str(model_dir)]
    res = runner.invoke(app, args)
    one_line_error(res, "internal error: RuntimeError; run with --debug for the traceback")
    res = runner.invoke(app, ["--debug", *args])
    assert isinstance(res.exception, RuntimeError)


def test_bad_devices_name_the_available_ones(tmp_path, model_dir):
    a = clip(tmp_path / "a.wav")
    res = runner.invoke(app, ["embed", a, "-m", str(model_dir), "-o", str(tmp_path / "e.npz"), "--device", "banana"])
    one_line_error(res, "unknown device 'banana'; available: cpu")
    if not torch.cuda.is_available():
        res = runner.invoke(app, ["verify", a, a, "-m", str(model_dir), "--device", "cuda"])
        one_line_error(res, "device 'cuda' is not available on this machine; available: cpu")


def test_huge_float_peak_gives_a_finite_score(tmp_path, model_dir):
    loud = clip(tmp_path / "loud.wav", 0, scale=3e38, subtype="FLOAT")  # finite, but its power overflows float32
    res = runner.invoke(app, ["verify", loud, clip(tmp_path / "b.wav", 0), "-m", str(model_dir)])
    assert res.exit_code == 0 and "nan" not in res.output, res.output
    assert float(res.output.split()[1]) > 0.99


def test_corrupt_model_config_is_one_line(tmp_path, model_dir):
    import shutil

    broken = tmp_path / "m"
    shutil.copytree(model_dir, broken)
    (broken / "config.json").write_text("[]")
    one_line_error(runner.invoke(app, ["info", str(broken)]), "not a ghostvlad model")


def test_stored_threshold_and_calibration_refused_for_onnx_models(tmp_path, model_dir):
    from ghostvlad.export import export_onnx

    onnx = export_onnx(load_model(model_dir), tmp_path / "m.onnx")
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a.wav b.wav\n")
    common = ["-m", str(onnx), "--trials", str(trials), "--wav-root", str(tmp_path), "--cache", str(tmp_path / "c")]
    one_line_error(runner.invoke(app, ["eval", *common, "--store-threshold"]), "cannot store a threshold in an ONNX")
    one_line_error(runner.invoke(app, ["calibrate", *common]), "cannot store a calibration in an ONNX model")


def test_calibrate_into_a_read_only_model_folder(tmp_path, model_dir, monkeypatch):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    wavs = [clip(tmp_path / f"{k}.wav", k) for k in range(6)]
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{int(i % 3 == j % 3)} {os.path.basename(wavs[i])} {os.path.basename(wavs[j])}\n"
                              for i in range(6) for j in range(i + 1, 6)))
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    real = fileio.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if str(dir) == str(model):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    common = ["-m", str(model), "--trials", str(trials), "--wav-root", str(tmp_path), "--cache", str(tmp_path / "c")]
    one_line_error(runner.invoke(app, ["calibrate", *common]), f"{model}/", "Read-only file system")
    one_line_error(runner.invoke(app, ["eval", *common, "-o", str(tmp_path / "ev"), "--store-threshold"]),
                   "Read-only file system")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_convert_keras_ghost_clusters_mismatch_fails(tmp_path):
    from support.keras import write_keras_h5

    h5 = tmp_path / "weights.h5"
    write_keras_h5(h5, backbone="resnet34s", width=0.125, pooling="vlad", clusters=3, ghost_clusters=0,
                   descriptor_dim=8, embed_dim=8)
    res = runner.invoke(app, ["convert-keras", str(h5), "--out", str(tmp_path / "m"), "--ghost-clusters", "2"])
    one_line_error(res, "vlad_center_assignment: the file has 3 clusters (3 + 0 ghost), 3 + 2 were asked")
    assert not (tmp_path / "m").exists()


def test_diarize_says_when_fewer_speakers_than_asked_can_be_found(tmp_path, model_dir):
    a = clip(tmp_path / "a.wav", seconds=1.5, scale=0.3)
    res = runner.invoke(app, ["diarize", a, "-m", str(model_dir), "--speakers", "4"])
    assert res.exit_code == 0, res.output
    assert "only 1 of the 4 speakers asked for could be told apart" in " ".join(res.output.split())


def test_gallery_in_a_read_only_folder_is_searched_and_enrolment_says_why_not(tmp_path, model_dir, monkeypatch):
    from ghostvlad.gallery import store as gallery_store

    a = clip(tmp_path / "a.wav")
    db = tmp_path / "g.db"
    assert runner.invoke(app, ["enroll", "ann", a, "-m", str(model_dir), "--db", str(db)]).exit_code == 0
    monkeypatch.setattr(gallery_store, "_writable", lambda path: False)  # as a read-only folder for a non-root user
    res = runner.invoke(app, ["identify", a, "-m", str(model_dir), "--db", str(db)])
    assert res.exit_code == 0 and "ann" in res.output, res.output
    assert runner.invoke(app, ["gallery", "list", "--db", str(db)]).exit_code == 0
    res = runner.invoke(app, ["enroll", "bob", a, "-m", str(model_dir), "--db", str(db)])
    one_line_error(res, "g.db: cannot write the gallery: it is read-only")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_threshold_flag_is_refused(tmp_path, model_dir, value):
    a = clip(tmp_path / "a.wav")
    res = runner.invoke(app, ["verify", a, a, "-m", str(model_dir), "--threshold", value])
    one_line_error(res, f"threshold must be a finite number, got {value}")


def test_the_argument_parser_leaves_file_checks_to_the_command(tmp_path, model_dir, monkeypatch):
    files = [clip(tmp_path / "a.wav", 0), clip(tmp_path / "b.wav", 1)]
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not str(path).endswith("b.wav")
                        and real_access(path, mode, **kw))  # what a user without read permission sees
    res = runner.invoke(app, ["embed", *files, "-m", str(model_dir), "-o", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output  # (root reads it anyway; the parser did not refuse the batch)
    assert list(np.load(tmp_path / "e.npz")["paths"]) == files


def test_an_output_that_is_one_of_the_inputs_is_refused(tmp_path, model_dir):
    files = [clip(tmp_path / "a.wav", 0), clip(tmp_path / "b.wav", 1)]
    before = (tmp_path / "a.wav").read_bytes()
    text = one_line_error(runner.invoke(app, ["embed", *files, "-m", str(model_dir), "-o", files[0]]))
    assert text == f"error: {files[0]}: is also an input ({files[0]}); choose another --out"
    assert (tmp_path / "a.wav").read_bytes() == before
    parts = [tmp_path / f"p{k}.npz" for k in range(2)]
    for k, part in enumerate(parts):
        assert runner.invoke(app, ["embed", *files, "-m", str(model_dir), "--shard", f"{k}/2", "-o", str(part)]).exit_code == 0
    kept = parts[1].read_bytes()
    one_line_error(runner.invoke(app, ["merge", *map(str, parts), "-o", str(parts[1])]), "p1.npz: is also an input")
    assert parts[1].read_bytes() == kept


def test_a_clip_under_the_front_ends_minimum_is_that_items_error_whatever_min_duration(tmp_path, model_dir):
    files = [clip(tmp_path / "a.wav", 0), clip(tmp_path / "one.wav", 1, seconds=1 / 16000), clip(tmp_path / "b.wav", 2)]
    base = ["embed", *files, "-m", str(model_dir), "-o", str(tmp_path / "e.npz"), "--min-duration"]
    res = runner.invoke(app, [*base, "0"])
    assert res.exit_code == 0, res.output
    assert f"skipped {files[1]}: too short for the front-end: 1 samples, needs at least 257" in " ".join(res.output.split())
    assert list(np.load(tmp_path / "e.npz")["paths"]) == [files[0], files[2]]
    for bad, message in (("-1", "greater than or equal to 0"), ("nan", "--min-duration"),
                         ("inf", "must be a finite number, got inf")):
        res = runner.invoke(app, [*base, bad])
        text = " ".join(w for w in res.output.split() if w != "│")
        assert res.exit_code == 2 and "Invalid value for '--min-duration'" in text and message in text, res.output


@pytest.mark.parametrize("args", [
    ["serve", "--max-wait-ms", "inf"], ["serve", "--max-upload-mb", "inf"], ["serve", "--read-timeout", "inf"],
    ["stream", "x.wav", "--update", "inf"], ["synth", "-o", "corpus", "--max-duration", "inf"],
    ["prepare", "--root", "r", "-o", "m.csv", "--shard-mb", "inf"]])
def test_infinite_flag_values_are_refused_before_any_work(tmp_path, model_dir, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*args, *(["-m", str(model_dir)] if args[0] in ("serve", "stream") else [])])
    text = " ".join(w for w in res.output.split() if w != "│")
    assert res.exit_code == 2 and "must be a finite number, got inf" in text, res.output
    assert list(tmp_path.iterdir()) == []  # nothing written (synth used to leave a synth.json that blocked a rerun)
