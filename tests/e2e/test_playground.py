"""The playground page in headless Chromium (Debian's `chromium` package, driven by Playwright).

Without a Chromium on the machine the test is skipped, unless QWEN_TTS_REQUIRE_BROWSER=1
(set by `.ci/run`, which installs it), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil

import numpy as np
import pytest
from helpers import SR

pytestmark = pytest.mark.browser  # drives Chromium (and, in tests/e2e, slow)

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    for name in BROWSER_NAMES:
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("QWEN_TTS_REQUIRE_BROWSER") == "1":
            pytest.fail("QWEN_TTS_REQUIRE_BROWSER=1 but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=path,
            headless=True,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--mute-audio"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(bypass_csp=True)  # lets the test evaluate its own checks
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.problems = problems
    page.goto(server.url + "/")
    yield page
    context.close()


def test_page_lists_voices_from_the_api(page, http):
    page.wait_for_function("window.playground.voices > 0", timeout=30_000)
    listed = http.get("/v1/audio/voices").json()["data"]
    options = page.eval_on_selector_all("#voice option", "els => els.map(e => e.value)")
    saved = [v["id"] for v in listed if v["type"] in ("audio_sample", "prompt")]
    assert options == saved + [v["id"] for v in listed if v["type"] == "builtin"] + [
        v["id"] for v in listed if v["type"] == "alias"
    ]
    assert "alloy" in options and "Vivian" in options
    assert page.problems == []


def run_synthesis(page, fmt: str, text: str) -> dict:
    page.wait_for_function("window.playground.voices > 0", timeout=30_000)
    page.fill("#input", text)
    page.select_option("#voice", "alloy")
    page.select_option("#format", fmt)
    page.click("#speak")
    page.wait_for_function("['done', 'error'].includes(window.playground.status)", timeout=120_000)
    return page.evaluate("window.playground")


def test_pcm_synthesis_streams_and_plays(page, http):
    state = run_synthesis(page, "pcm", "Hello from the playground.")
    assert state["status"] == "done", state
    expected = http.post(
        "/v1/audio/speech",
        json={
            "model": "qwen3-tts",
            "voice": "alloy",
            "response_format": "pcm",
            "input": "Hello from the playground.",
            "stream": False,
        },
    ).content
    # Every byte arrived and was scheduled for playback as it came.
    assert state["bytes"] == len(expected)
    assert abs(state["seconds"] - len(expected) / 2 / SR) < 1e-3
    assert state["firstAudioMs"] is not None and state["seconds"] > 0.5
    assert state["audioContext"] == "running"  # the chunks were played through Web Audio
    assert page.eval_on_selector("#player", "el => el.src.startsWith('blob:')")
    # What it measured: time to first audio and real-time factor, on the page and in its history.
    assert state["totalMs"] >= state["firstAudioMs"] > 0
    assert abs(state["rtf"] - state["totalMs"] / 1000 / state["seconds"]) < 1e-6
    figures = page.inner_text("#figures")
    shown = re.search(r"First audio (\d+) ms .* real-time factor ([\d.]+)", figures)
    assert shown, figures  # rounded by JavaScript: compare as numbers
    assert abs(int(shown[1]) - state["firstAudioMs"]) <= 1 and abs(float(shown[2]) - state["rtf"]) <= 0.01
    assert state["history"][0]["format"] == "pcm" and page.locator("#history tbody tr").count() >= 1
    # The waveform holds every sample, drawn.
    assert state["waveformSamples"] == len(expected) // 2
    assert inked_pixels(page) > 100
    # The download is the audio: pcm saved as a wav file around the same samples.
    assert state["download"]["name"] == "speech.wav" and page.is_visible("#download")
    saved = download_bytes(page)
    assert saved[:4] == b"RIFF" and len(saved) == 44 + len(expected)
    assert page.problems == []


def test_show_words_highlights_each_word_as_it_plays(page, http):
    text = "<speak>Words are shown. <break time='1s'/> Each one lights up.</speak>"
    page.wait_for_function("window.playground.voices > 0", timeout=30_000)
    page.check("#show-words")
    state = run_synthesis(page, "mp3", text)
    assert state["status"] == "done", state
    timed = http.post(
        "/v1/audio/speech/with-timestamps",
        json={"model": "qwen3-tts", "voice": "alloy", "response_format": "mp3", "input": text},
    ).json()["words"]
    assert (
        [w["word"] for w in state["words"]]
        == [w["word"] for w in timed]
        == ["Words", "are", "shown.", "Each", "one", "lights", "up."]
    )
    assert page.locator("#words span[data-index]").count() == len(timed)
    # Seek into a later word: it, and only it, is highlighted.
    for index in (4, 1):
        target = (
            (timed[index]["start"] + timed[index]["end"]) / 2
            if timed[index]["end"] > timed[index]["start"]
            else timed[index]["start"]
        )
        page.evaluate(
            f"(() => {{ const p = document.getElementById('player'); p.pause(); p.currentTime = {target}; }})()"
        )
        last_started = max(i for i, w in enumerate(timed) if w["start"] <= target + 1e-6)
        page.wait_for_function(f"window.playground.highlighted === {last_started}", timeout=10_000)
        assert page.eval_on_selector_all("#words span.now", "els => els.map(e => e.dataset.index)") == [
            str(last_started)
        ]
    assert page.problems == []


def test_ssml_at_another_sample_rate_and_the_sections_the_models_allow(page, http):
    page.wait_for_function("window.playground.voices > 0", timeout=30_000)
    assert page.evaluate("window.playground.families") == ["Base", "CustomVoice", "VoiceDesign"]
    assert page.is_visible("#clone-section") and page.is_visible("#design-section")
    text = '<speak>Rates <break time="400ms"/> and breaks.</speak>'
    page.select_option("#rate", "16000")
    state = run_synthesis(page, "pcm", text)
    assert state["status"] == "done", state
    expected = http.post(
        "/v1/audio/speech",
        json={"model": "qwen3-tts", "voice": "alloy", "response_format": "pcm", "input": text, "sample_rate": 16000},
    ).content
    assert state["bytes"] == len(expected) and abs(state["seconds"] - len(expected) / 2 / 16000) < 1e-3
    saved = download_bytes(page)
    assert int.from_bytes(saved[24:28], "little") == 16000 and len(saved) == 44 + len(expected)
    # The page scales by 32768 one way and 32767 back: one step of difference at most.
    page_samples, sent = np.frombuffer(saved[44:], "<i2").astype(int), np.frombuffer(expected, "<i2").astype(int)
    assert np.abs(page_samples - sent).max() <= 1
    assert page.problems == []


def inked_pixels(page) -> int:
    return page.evaluate(
        """() => { const c = document.getElementById('waveform');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )


def download_bytes(page) -> bytes:
    values = page.evaluate(
        """async () => { const r = await fetch(document.getElementById('download').href);
                         return Array.from(new Uint8Array(await r.arrayBuffer())); }"""
    )
    return bytes(values)


def test_the_waveform_grows_while_the_audio_streams_in(page):
    page.wait_for_function("window.playground.voices > 0", timeout=30_000)
    page.fill("#input", "A longer text, so that the audio keeps arriving for a while. " * 6)
    page.select_option("#voice", "alloy")
    page.select_option("#format", "pcm")
    page.click("#speak")
    page.wait_for_function(
        "window.playground.status === 'streaming' && window.playground.waveformSamples > 0", polling=20, timeout=120_000
    )
    while_streaming = page.evaluate("window.playground.waveformSamples")
    page.wait_for_function("window.playground.status === 'done'", timeout=120_000)
    assert page.evaluate("window.playground.waveformSamples") > while_streaming
    assert page.problems == []


def test_mp3_synthesis_plays_in_the_audio_element(page):
    state = run_synthesis(page, "mp3", "An mp3 this time.")
    assert state["status"] == "done", state
    assert state["bytes"] > 1000 and state["seconds"] > 0.5
    page.wait_for_function("window.playground.playing", timeout=30_000)  # the element really plays it
    assert state["download"]["name"] == "speech.mp3" and len(download_bytes(page)) == state["bytes"]
    assert state["waveformSamples"] > 0.5 * SR and inked_pixels(page) > 100  # drawn once decoded
    assert state["rtf"] > 0
    assert page.problems == []


def test_design_a_voice_hear_it_then_keep_it(page, http):
    """Speak in a described voice (VoiceDesign), then design and save it: the saved voice is
    selected and speaks through Base."""
    description, text = "A calm, low narrator.", "Designed in the playground."
    page.wait_for_function("window.playground.voices > 0", timeout=30_000)
    page.fill("#input", text)
    page.fill("#description", description)
    page.select_option("#format", "pcm")
    page.click("#speak")
    page.wait_for_function("['done', 'error'].includes(window.playground.status)", timeout=120_000)
    state = page.evaluate("window.playground")
    assert state["status"] == "done", state
    expected = http.post(
        "/v1/audio/speech",
        json={"model": "qwen3-tts-voicedesign", "instructions": description, "input": text, "response_format": "pcm"},
    ).content
    assert state["bytes"] == len(expected) and state["history"][0]["voice"].startswith("(designed)")

    name = f"Playground {secrets.token_hex(3)}"
    page.fill("#design-name", name)
    page.click("#design-save")
    page.wait_for_function("window.playground.designed !== null", timeout=120_000)
    designed = page.evaluate("window.playground.designed")
    assert designed["name"] == name and designed["type"] == "prompt" and designed["prompt"] == description
    assert page.eval_on_selector("#voice", "el => el.value") == designed["id"]
    assert f"{name} (designed)" in page.inner_text("#voice")
    assert page.input_value("#description") == ""  # the saved voice speaks from now on

    page.click("#speak")
    page.wait_for_function("window.playground.history.length === 2", timeout=120_000)
    saved = http.post(
        "/v1/audio/speech",
        json={"model": "qwen3-tts", "voice": designed["id"], "input": text, "response_format": "pcm"},
    ).content
    assert page.evaluate("window.playground.bytes") == len(saved) and saved != expected
    assert page.problems == []


def test_errors_are_shown_not_thrown(page):
    page.wait_for_function("window.playground.voices > 0", timeout=30_000)
    page.evaluate("document.getElementById('input').removeAttribute('required')")
    page.fill("#input", "   ")
    page.click("#speak")
    page.wait_for_function("window.playground.status === 'error'", timeout=30_000)
    assert "input" in page.inner_text("#status").lower()
    # The server's 400 is logged by Chromium as a failed resource load; nothing else.
    assert all("400" in problem for problem in page.problems), page.problems


def test_page_works_under_its_own_content_security_policy(browser, server):
    """Without bypass_csp: a CSP violation would show as a console error or a stuck page."""
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(server.url + "/")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page.wait_for_selector("#voice option[value='alloy']", state="attached", timeout=30_000)
    page.fill("#input", "Under the policy.")
    page.click("#speak")
    page.wait_for_selector("#status:has-text('Done')", timeout=120_000)
    assert problems == []
    context.close()


def test_page_with_api_keys_asks_for_one(browser, demo_models):
    from helpers import LiveServer, cpu_settings

    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], api_keys=["sk-page"])
    with LiveServer(settings) as live:
        context = browser.new_context()
        page = context.new_page()
        page.goto(live.url + "/")  # the page itself needs no key
        page.wait_for_selector("#status:has-text('API key')", timeout=30_000)
        assert page.eval_on_selector_all("#voice option", "els => els.length") == 0
        page.fill("#key", "sk-page")
        page.dispatch_event("#key", "change")
        page.wait_for_selector("#voice option[value='alloy']", state="attached", timeout=30_000)
        # Only CustomVoice is loaded: no cloning, no designing.
        assert page.evaluate("window.playground.families") == ["CustomVoice"]
        assert not page.is_visible("#clone-section") and not page.is_visible("#design-section")
        page.fill("#input", "With a key.")
        page.click("#speak")
        page.wait_for_selector("#status:has-text('Done')", timeout=120_000)
        context.close()
