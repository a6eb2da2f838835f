"""The web page in real headless Chromium with a fake microphone playing a wav file (selenium).

The tiny random model cannot tell alice's tone from bob's (their scores differ in the third decimal, either
way round), so the page's answers are checked against the service's answers on the exact clip the page
recorded, and the clip against alice's pitch; only carol's far tone is left for the model to tell apart.
"""
import base64
import io
import shutil

import httpx
import numpy as np
import pytest
import soundfile as sf
from support.serve import VOICES, voice, wav_bytes

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them: apt-get install chromium chromium-driver)")]


@pytest.fixture
def browser(tmp_path):
    """Chromium whose microphone plays alice's voice (looping), granted without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    mic = tmp_path / "mic.wav"
    sf.write(mic, voice(VOICES["alice"], 4.0, seed=5), 16000, subtype="PCM_16")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_text(driver, element_id: str, predicate, timeout: float = 20.0) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: predicate(d.find_element("id", element_id).text))
    return driver.find_element("id", element_id).text


def record(driver, slot: str, seconds: float) -> None:
    import time

    driver.find_element("id", f"record-{slot}").click()
    wait_text(driver, "result", lambda t: t.startswith(f"recording {slot.upper()}…"))
    time.sleep(seconds)
    driver.find_element("id", f"record-{slot}").click()
    wait_text(driver, f"clip-{slot}", lambda t: t.startswith("recorded "))


def recorded(driver, slot: str) -> bytes:
    """The WAV bytes the page holds for ``slot`` (what it uploads), read back through its player's blob URL."""
    encoded = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById(arguments[0]).src).then((r) => r.arrayBuffer()).then((buffer) => {"
        "  let text = ''; for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);"
        "  done(btoa(text)); });", f"play-{slot}")
    return base64.b64decode(encoded)


def pitch(wav: bytes) -> float:
    """The strongest frequency in a WAV clip, in Hz."""
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spectrum)])


def test_record_enrol_identify_verify_remove_in_chromium(model, serve, browser, tmp_path):
    base = serve(model, tmp_path / "speakers.db")
    for name in ("bob", "carol"):
        httpx.post(f"{base}/v1/enroll", data={"name": name},
                   files={"file": ("x.wav", wav_bytes(voice(VOICES[name], 1.5, seed=2)), "audio/wav")}).raise_for_status()
    browser.get(base + "/")
    wait_text(browser, "status", lambda t: t.startswith("model "))
    wait_text(browser, "speakers", lambda t: "bob (1 recording)" in t and "carol" in t)

    record(browser, "a", 1.5)  # the microphone: alice
    seconds = float(browser.find_element("id", "clip-a").text.split()[1])
    assert 1.0 < seconds < 4.0
    assert abs(pitch(recorded(browser, "a")) - VOICES["alice"]) < 5  # the microphone's voice reached the clip
    browser.find_element("id", "name").send_keys("alice")
    browser.find_element("id", "enrol").click()
    assert wait_text(browser, "result", lambda t: t.startswith("enrolled")) == \
        "enrolled alice: 1 recording in all; 3 speakers in the gallery"
    wait_text(browser, "speakers", lambda t: "alice (1 recording)" in t)

    record(browser, "a", 2.0)
    clip = recorded(browser, "a")
    assert abs(pitch(clip) - VOICES["alice"]) < 5
    browser.find_element("id", "identify").click()
    result = wait_text(browser, "result", lambda t: t.startswith(("best match", "identified", "unknown")))
    matches = httpx.post(f"{base}/v1/identify", files={"file": ("a.wav", clip)}).json()["matches"]
    assert result == f"best match: {matches[0]['name']} (score {matches[0]['score']:.3f}; no threshold known)"
    ranked = [f"{i}. {m['name']}  {m['score']:.4f}" for i, m in enumerate(matches, 1)]
    assert browser.find_element("id", "details").text.splitlines() == ranked
    names = [m["name"] for m in matches]
    assert names.index("alice") < names.index("carol")

    uploads = {}
    for slot, name in (("a", "alice"), ("b", "bob")):
        uploads[slot] = tmp_path / f"{name}.wav"
        uploads[slot].write_bytes(wav_bytes(voice(VOICES[name], 1.5, seed=8)))
        browser.find_element("id", f"file-{slot}").send_keys(str(uploads[slot]))
    browser.find_element("id", "verify").click()
    result = wait_text(browser, "result", lambda t: t.startswith("score:"))
    expected = httpx.post(f"{base}/v1/verify", files={s: (p.name, p.read_bytes()) for s, p in uploads.items()}).json()
    assert result == f"score: {expected['score']:.3f} (no threshold known)"

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio" * 100)
    browser.find_element("id", "file-a").send_keys(str(garbage))
    browser.find_element("id", "identify").click()
    result = wait_text(browser, "result", lambda t: t.startswith("garbage.wav"))
    assert result.startswith("garbage.wav: cannot decode audio") and \
        browser.find_element("id", "result").get_attribute("class") == "error"

    bob = [li for li in browser.find_elements("css selector", "#speakers li") if li.text.startswith("bob")][0]
    bob.find_element("tag name", "button").click()
    wait_text(browser, "speakers", lambda t: "bob" not in t and "alice" in t)
    assert [s["name"] for s in httpx.get(f"{base}/v1/speakers").json()["speakers"]] == ["alice", "carol"]


def test_live_view_names_the_speaker_at_the_microphone(model, serve, browser, tmp_path):
    base = serve(model, tmp_path / "speakers.db")
    for name in ("alice", "carol"):  # alice from the file the microphone plays; bob's tone is too near hers
        audio = (tmp_path / "mic.wav").read_bytes() if name == "alice" else wav_bytes(voice(VOICES[name], 1.5, seed=2))
        httpx.post(f"{base}/v1/enroll", data={"name": name}, files={"file": ("x.wav", audio)}).raise_for_status()
    browser.get(base + "/")
    wait_text(browser, "speakers", lambda t: "alice" in t)
    browser.find_element("id", "live-start").click()
    wait_text(browser, "live-seconds", lambda t: t.endswith("s heard") and float(t.split()[0]) >= 1.5)
    assert browser.find_element("id", "live-speaker").text == "alice"
    assert "(no threshold known)" in browser.find_element("id", "live-score").text
    browser.find_element("id", "live-reset").click()
    wait_text(browser, "live-seconds", lambda t: float(t.split()[0]) < 1.0)
    browser.find_element("id", "live-stop").click()
    assert browser.find_element("id", "live-start").is_enabled()
    assert browser.find_element("id", "result").get_attribute("class") == "ok"  # no error was shown
