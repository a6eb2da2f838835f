from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.audio import write_aac
from torch.utils.data import DataLoader

from ghostvlad.audio import AudioError, load_audio
from ghostvlad.data import dataset
from ghostvlad.data.dataset import CropDataset, DatasetError, crop_plan, crop_samples, read_crop
from ghostvlad.data.manifest import Manifest
from ghostvlad.features import train_crop

SIZE = 249 * 160
# lengths around the thresholds: doubled clip shorter than the crop, exactly 250 frames, just over, and long
LENGTHS = [4000, 19000, 19919, 19920, 19999, 20000, 20080, 20081, 39840, 39841, 47000, 80000, 160003]


def pcm(n: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.2, (n, channels)) * 32767).clip(-32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    files = []
    for k, n in enumerate(LENGTHS):
        for ext, channels in (("wav", 1), ("flac", 1), ("wav", 2)):
            path = root / f"c{n}_{channels}.{ext}"
            sf.write(path, pcm(n, channels, k), 16000, subtype="PCM_16")
            files.append(path)
    return files


def test_crop_plan_matches_train_crop_draws():
    for n in LENGTHS:
        for seed in range(50):
            reverse, start, length = crop_plan(n, np.random.default_rng(seed))
            wave = np.arange(1, n + 1, dtype=np.float32)  # distinct values locate the window
            crop = train_crop(wave, np.random.default_rng(seed))
            doubled = np.concatenate([wave, wave])
            expected = (doubled[::-1] if reverse else doubled)[start : start + length]
            assert np.array_equal(crop[:length], expected) and not crop[length:].any()


def test_partial_read_equals_full_load_crop(clips):
    seen = {"reversed": 0, "straddles": 0, "padded": 0, "inside": 0}
    for path in clips:
        wave = load_audio(path, min_duration=0.0)
        n = len(wave)
        for seed in range(40):
            got = read_crop(path, np.random.default_rng(seed), duration=n / 16000)
            expected = train_crop(wave, np.random.default_rng(seed))
            assert got.dtype == np.float32 and got.shape == (SIZE,)
            assert np.array_equal(got, expected), (path.name, seed)
            reverse, start, length = crop_plan(n, np.random.default_rng(seed))
            seen["reversed"] += reverse
            seen["padded"] += length < SIZE
            seen["straddles"] += start < n < start + length
            seen["inside"] += start + length <= n or start >= n
    assert min(seen.values()) > 50, seen


def test_only_the_crop_samples_are_read(tmp_path):
    """Overwrite every sample the crop does not need: the crop must not change."""
    n = 10 * 16000
    original = pcm(n, seed=5)[:, 0]
    wave = original.astype(np.float32) / 32768
    reversed_crops = 0
    for seed in range(12):
        reverse, start, length = crop_plan(n, np.random.default_rng(seed))
        begin = 2 * n - start - length if reverse else start
        needed = np.zeros(n, bool)
        needed[np.arange(begin, begin + length) % n] = True
        assert needed.sum() == length  # long clip: the window never overlaps itself
        scrambled = original.copy()
        scrambled[~needed] = 12345
        path = tmp_path / f"s{seed}.flac"
        sf.write(path, scrambled, 16000, subtype="PCM_16")
        got = read_crop(path, np.random.default_rng(seed), duration=n / 16000)
        assert np.array_equal(got, train_crop(wave, np.random.default_rng(seed)))
        reversed_crops += reverse
    assert 0 < reversed_crops < 12


def test_straddling_crop_reads_both_ends(tmp_path):
    """A crop over the join takes the clip's end and its start; scrambling the middle changes nothing."""
    n = 30000  # doubled 60000 samples: most windows cross the join at 30000
    original = pcm(n, seed=6)[:, 0]
    wave = original.astype(np.float32) / 32768
    straddling = 0
    for seed in range(30):
        reverse, start, length = crop_plan(n, np.random.default_rng(seed))
        begin = 2 * n - start - length if reverse else start
        if not begin < n < begin + length:
            continue
        straddling += 1
        scrambled = original.copy()
        scrambled[begin + length - n : begin] = -999  # between the two segments
        path = tmp_path / "s.wav"
        sf.write(path, scrambled, 16000, subtype="PCM_16")
        got = read_crop(path, np.random.default_rng(seed), duration=n / 16000)
        assert np.array_equal(got, train_crop(wave, np.random.default_rng(seed)))
    assert straddling > 10


def test_m4a_crops_are_decoded_from_seek_points_and_equal_the_whole_decode(tmp_path, monkeypatch):
    waves = {}
    for k, n in enumerate([4000, 19919, 20081, 39841, 47000, 80000, 128000, 160003]):
        for channels in (1, 2):
            path = tmp_path / f"c{n}_{channels}.m4a"
            write_aac(path, pcm(n, channels, k))
            waves[path] = load_audio(path, min_duration=0.0)
    seen = {"reversed": 0, "straddles": 0, "near the start": 0}

    def whole_decode(*args, **kwargs):
        raise AssertionError("decoded the whole file")

    monkeypatch.setattr(dataset, "load_audio", whole_decode)
    for path, wave in waves.items():
        n = len(wave)
        for seed in range(30):
            got = read_crop(path, np.random.default_rng(seed), duration=n / 16000)
            assert np.array_equal(got, train_crop(wave, np.random.default_rng(seed))), (path.name, seed)
            reverse, start, length = crop_plan(n, np.random.default_rng(seed))
            begin = 2 * n - start - length if reverse else start
            seen["reversed"] += reverse
            seen["straddles"] += begin < n < begin + length
            seen["near the start"] += begin % n < 2048 or begin + length > n  # decoded from the first frame
    assert min(seen.values()) > 30, seen


def test_other_rates_and_formats_fall_back_to_full_decode(tmp_path):
    path8k = tmp_path / "a.wav"
    sf.write(path8k, pcm(30000, seed=1), 8000, subtype="PCM_16")
    m4a8k = tmp_path / "b.m4a"
    write_aac(m4a8k, pcm(30000, seed=2), rate=8000)
    ogg = tmp_path / "c.ogg"
    sf.write(ogg, pcm(50000, seed=3), 16000, format="OGG", subtype="VORBIS")
    for path in (path8k, m4a8k, ogg):
        wave = load_audio(path)
        for seed in range(5):
            got = read_crop(path, np.random.default_rng(seed), duration=len(wave) / 16000)
            assert np.array_equal(got, train_crop(wave, np.random.default_rng(seed)))
    m4a = tmp_path / "d.m4a"
    write_aac(m4a, pcm(50000, seed=4))
    wave = load_audio(m4a)
    got = read_crop(m4a, np.random.default_rng(0))  # no manifest duration: decoded whole
    assert np.array_equal(got, train_crop(wave, np.random.default_rng(0)))
    with pytest.raises(AudioError, match=f"^{m4a}: has .* s of audio but the manifest says 2.0000 s"):
        read_crop(m4a, np.random.default_rng(0), duration=2.0)  # the container disagrees: checked by a whole decode
    m4a.write_bytes(m4a.read_bytes()[:-3000])  # truncated after the manifest was made
    with pytest.raises(AudioError, match=f"^{m4a}: cannot decode audio"):
        read_crop(m4a, np.random.default_rng(0), duration=len(wave) / 16000)


def test_bad_files_raise_audio_error_naming_them(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, pcm(48000), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=f"^{path}: has 3.0000 s of audio but the manifest says 2.5000 s"):
        read_crop(path, np.random.default_rng(0), duration=2.5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated after the manifest was made
    with pytest.raises(AudioError, match=f"^{path}: .*the file changed since the manifest was made"):
        read_crop(path, np.random.default_rng(0), duration=3.0)
    path.write_bytes(b"RIFF junk")
    with pytest.raises(AudioError, match=f"^{path}: cannot read audio"):
        read_crop(path, np.random.default_rng(0), duration=3.0)
    wave = pcm(48000).astype(np.float32) / 32768
    wave[::1000] = np.nan
    for rate in (16000, 8000):  # the crop's samples read alone, and the whole file decoded (and resampled)
        sf.write(path, wave, rate, subtype="FLOAT")
        with pytest.raises(AudioError, match=f"^{path}: contains [0-9]+ NaN or infinite sample"):
            read_crop(path, np.random.default_rng(0), duration=None, frames=250)
    with pytest.raises(AudioError, match=f"^{tmp_path / 'gone.flac'}: file not found$"):
        read_crop(tmp_path / "gone.flac", np.random.default_rng(0))
    with pytest.raises(AudioError, match=f"^{tmp_path / 'gone.m4a'}: file not found$"):
        read_crop(tmp_path / "gone.m4a", np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths, speakers, durations = [], [], []
    for k in range(12):
        n = 20000 + 7919 * k
        path = root / f"id{k % 3:05d}" / f"{k:05d}.{'wav' if k % 2 else 'flac'}"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, pcm(n, seed=k), 16000, subtype="PCM_16")
        paths.append(str(path))
        speakers.append(f"id{k % 3:05d}")
        durations.append(n / 16000)
    return Manifest(paths, speakers, np.array(durations, np.float32))


def test_dataset_items_and_determinism(manifest):
    ds = CropDataset(manifest, seed=7)
    assert len(ds) == 12
    crop, label = ds[4]
    assert crop.shape == (SIZE,) and crop.dtype == np.float32 and label == 1
    assert [ds[i][1] for i in range(12)] == manifest.labels().tolist()
    wave = load_audio(manifest.paths[4], min_duration=0.0)
    assert np.array_equal(crop, train_crop(wave, np.random.default_rng([7, 0, 4])))
    assert np.array_equal(ds[4][0], crop)
    assert np.array_equal(CropDataset(manifest, seed=7)[4][0], crop)
    ds.set_epoch(1)
    assert ds.epoch == 1
    other_epoch = np.stack([ds[i][0] for i in range(12)])
    ds.set_epoch(0)
    first_epoch = np.stack([ds[i][0] for i in range(12)])
    assert sum(not np.array_equal(a, b) for a, b in zip(first_epoch, other_epoch)) >= 10  # short clips may repeat
    other_seed = CropDataset(manifest, seed=8)
    assert not np.array_equal(other_seed[4][0], crop)
    with pytest.raises(DatasetError, match="epoch must be >= 0"):
        ds.set_epoch(-1)


def test_dataset_speaker_ids(manifest):
    ids = ["id00002", "extra", "id00000", "id00001"]
    ds = CropDataset(manifest, speaker_ids=ids)
    assert [ds[i][1] for i in range(3)] == [2, 3, 0]
    with pytest.raises(DatasetError, match="1 manifest speaker\\(s\\) not in speaker_ids, e.g. 'id00002'"):
        CropDataset(manifest, speaker_ids=["id00000", "id00001"])


def batches(loader) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in loader]


class EpochOrder:
    """A batch sampler whose batches depend on the epoch (like the training loop's)."""

    def __init__(self) -> None:
        self.epoch = 0

    def __iter__(self):
        return iter(np.random.default_rng(self.epoch).permutation(12).reshape(3, 4).tolist())

    def __len__(self) -> int:
        return 3


def test_same_batches_for_any_number_of_workers(manifest):
    ds = CropDataset(manifest, seed=3)
    order = EpochOrder()
    reference = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        order.epoch = epoch
        reference.append(batches(DataLoader(ds, batch_sampler=order, num_workers=0)))
    assert len(reference[0]) == 3 and reference[0][0][0].shape == (4, SIZE)
    first = np.random.default_rng(0).permutation(12)[:4]
    assert reference[0][0][1].tolist() == manifest.labels()[first].tolist()
    assert not np.array_equal(reference[0][0][0], reference[1][0][0])
    persistent = DataLoader(ds, batch_sampler=order, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):  # set_epoch must also reach persistent worker processes
        ds.set_epoch(epoch)
        order.epoch = epoch
        for loader in (DataLoader(ds, batch_sampler=order, num_workers=2), persistent):
            got = batches(loader)
            assert len(got) == 3
            for (x, y), (rx, ry) in zip(got, reference[epoch]):
                assert np.array_equal(x, rx) and np.array_equal(y, ry)


def test_crop_samples():
    assert crop_samples() == SIZE and crop_samples(300) == 299 * 160


# ---------------------------------------------------------------------------------------------- speed perturbation


def test_speed_perturbation_makes_classes_and_plays_faster(tmp_path):
    t = np.arange(3 * 16000) / 16000
    path = tmp_path / "id00000" / "tone.wav"
    path.parent.mkdir()
    sf.write(path, (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 16000)
    tone = Manifest([str(path), str(path)], ["id00000", "id00001"], np.array([3.0, 3.0], np.float32))
    plain = CropDataset(tone, seed=0, frames=100)
    ds = CropDataset(tone, seed=0, frames=100, speeds=[0.9, 1.0, 1.1])
    assert ds.classes == 6 and plain.classes == 2
    seen = {}
    for epoch in range(12):
        ds.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in range(2):
            crop, label = ds[i]
            assert crop.shape == (crop_samples(100),) and label // 3 == i
            speed = ds.speeds[label % 3]
            spectrum = np.abs(np.fft.rfft(crop * np.hanning(len(crop))))
            peak = np.argmax(spectrum) * 16000 / len(crop)
            assert abs(peak - 1000 * speed) < 5  # played `speed` times faster: pitch scales too
            if speed == 1.0:  # the unperturbed speed is the plain crop, sample for sample
                np.testing.assert_array_equal(crop, plain[i][0])
            seen[label % 3] = True
            ds.set_epoch(epoch)
    assert len(seen) == 3
    again = CropDataset(tone, seed=0, frames=100, speeds=[0.9, 1.0, 1.1])
    again.set_epoch(11)
    np.testing.assert_array_equal(again[1][0], ds[1][0])


def test_bad_speeds_are_refused(manifest):
    for speeds in ([], [0.9, 0.9], [3.0]):
        with pytest.raises(DatasetError, match="speeds"):
            CropDataset(manifest, speeds=speeds)


def test_sessions_and_donors(manifest):
    ds = CropDataset(manifest, seed=0, frames=60)
    sessions = ds.sessions()
    folders = [str(Path(p).parent) for p in manifest.paths]
    assert len(set(sessions.tolist())) == len(set(folders))
    assert all((sessions[i] == sessions[j]) == (folders[i] == folders[j]) for i in range(12) for j in range(12))
    a, b = ds.donor(np.random.default_rng(1)), ds.donor(np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (crop_samples(60),)
