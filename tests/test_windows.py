import numpy as np
import pytest
import soundfile as sf
from support.windows import RATE, clip, model, tiny_model  # noqa: F401  (fixtures)

from ghostvlad.windows import embed_windows, iter_windows, window_bounds


def test_window_count_and_times(model):
    w = embed_windows(model, clip(5.3), window=2.0, hop=0.5)
    np.testing.assert_allclose(w.starts, np.arange(8) * 0.5)
    np.testing.assert_allclose(w.ends, [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.3])  # the last one is shorter
    assert w.embeddings.shape == (8, 16) and w.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(w.embeddings, axis=1), 1, atol=1e-5)
    exact = embed_windows(model, clip(4.0), window=2.0, hop=0.5)  # windows fit exactly: all full length
    np.testing.assert_allclose(exact.ends - exact.starts, 2.0)
    assert len(exact) == 5
    short = embed_windows(model, clip(1.2), window=2.0, hop=0.5)  # shorter than a window: the whole clip
    assert (short.starts.tolist(), short.ends.tolist()) == ([0.0], [1.2])


def test_window_bounds_drops_a_tail_too_short_for_the_front_end():
    starts, ends = window_bounds(1000, 400, 400, shortest=257)
    assert (starts.tolist(), ends.tolist()) == ([0, 400], [400, 800])
    starts, ends = window_bounds(1100, 400, 400, shortest=257)
    assert (starts.tolist(), ends.tolist()) == ([0, 400, 800], [400, 800, 1100])


@pytest.mark.parametrize("mirror", [False, True])
def test_batched_windows_equal_windows_embedded_one_by_one(mirror):
    model = tiny_model(mirror=mirror, batch_frames=700 * (2 if mirror else 1))
    wave = clip(5.3, seed=1)
    calls = []
    forward = model.embed_waveforms
    model.embed_waveforms = lambda waves: calls.append([len(w) for w in waves]) or forward(waves)
    w = embed_windows(model, wave, window=2.0, hop=0.5)
    del model.embed_waveforms
    assert len(calls) == 3 and sum(map(len, calls)) == 8  # batched, under batch_frames
    assert all(model.frontend.config.num_frames(max(c)) * len(c) <= model.batch_frames for c in calls)
    slices = [wave[round(s * RATE):round(e * RATE)] for s, e in zip(w.starts, w.ends)]
    alone = np.stack([model.embed_waveforms([x])[0] for x in slices])
    np.testing.assert_allclose(w.embeddings, alone, atol=2e-5)
    last = wave[round(w.starts[-1] * RATE):]
    padded = model.embed_waveforms([np.pad(last, (0, 2 * RATE - len(last)))])[0]
    assert not np.allclose(w.embeddings[-1], padded, atol=1e-3)  # the short window is not zero-padded audio


def test_windows_of_loaded_files_and_resampled_arrays(model, tmp_path):
    wave = clip(3.1, seed=2)
    path = tmp_path / "a.wav"
    sf.write(path, wave, RATE, subtype="FLOAT")
    w = embed_windows(model, model.load_item(path), window=1.5, hop=0.75)
    ref = embed_windows(model, wave, 1.5, 0.75)
    np.testing.assert_allclose(w.starts, ref.starts)
    np.testing.assert_allclose(w.ends, ref.ends)
    np.testing.assert_allclose(w.embeddings, ref.embeddings, atol=1e-5)
    w8 = embed_windows(model, model.load_item(wave[::2], sample_rate=8000), window=1.5, hop=0.75)
    assert w8.ends[-1] == pytest.approx(3.1, abs=1e-3) and len(w8) == len(w)


@pytest.mark.parametrize(
    ("window", "hop", "message"),
    [(0.0, 0.5, "window must be a positive"), (2.0, -1.0, "hop must be a positive"),
     (float("nan"), 0.5, "window must be a positive"), (0.01, 0.01, "window 0.01 s is too short")],
)
def test_bad_window_settings_raise_one_line_errors(model, window, hop, message):
    with pytest.raises(ValueError, match=message):
        embed_windows(model, clip(2.0), window, hop)


def test_iter_windows_reports_bad_files_and_keeps_order(model, tmp_path):
    good = [tmp_path / f"{k}.wav" for k in range(2)]
    for k, path in enumerate(good):
        sf.write(path, clip(2.5 + k, seed=k), RATE)
    missing = tmp_path / "missing.wav"
    results = list(iter_windows(model, [good[0], missing, good[1]], 2.0, 1.0))
    assert [r.index for r in results] == [0, 1, 2]
    assert results[1].windows is None and str(results[1].error) == f"{missing}: file not found"
    assert [len(r.windows) for r in (results[0], results[2])] == [2, 3]
