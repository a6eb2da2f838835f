"""The web page in real headless Chromium with a fake microphone playing a wav file (selenium)."""
import shutil

import httpx
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
    browser.find_element("id", "name").send_keys("alice")
    browser.find_element("id", "enrol").click()
    assert wait_text(browser, "result", lambda t: t.startswith("enrolled")) == \
        "enrolled alice: 1 recording in all; 3 speakers in the gallery"
    wait_text(browser, "speakers", lambda t: "alice (1 recording)" in t)

    record(browser, "a", 2.0)  # longer than enrolment: a capture hiccup under load weighs less
    browser.find_element("id", "identify").click()
    result = wait_text(browser, "result", lambda t: t.startswith(("best match", "identified", "unknown")))
    assert result.startswith("best match: alice (score ")  # the tiny model has no threshold
    assert browser.find_element("id", "details").text.splitlines()[0].startswith("1. alice ")

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
    for name in VOICES:  # alice from the file the microphone plays
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
