"""The WebSocket speaks SSML turns and writes numbers out as they arrive: what a voice agent
sees in ``audio.start``/``audio.done`` and hears."""

from __future__ import annotations

import numpy as np
from helpers import SR
from live_socket import PCM, SAMPLES_PER_FRAME, check_turn, event, open_socket, pcm, send, speak, words

FRAMES = 6
CONFIG = {**PCM, "voice": "vivian", "temperature": 0, "max_new_tokens": FRAMES}


def test_numbers_are_written_out_as_they_arrive_and_reported_so(server):
    with open_socket(server) as ws:
        send(ws, type="session.config", **CONFIG)
        events, audio = speak(ws, words("I have 3 cats and 12 dogs."))
        check_turn(events, audio)
        texts = [e["sentence_text"] for e in events if e["type"] == "audio.done"]
        assert texts == ["I have three cats and twelve dogs."]
        spoken = pcm(audio)
        send(ws, type="session.config", **CONFIG, normalize=False)
        events, audio = speak(ws, words("I have 3 cats and 12 dogs."))
        check_turn(events, audio, utterance=1)
        assert [e["sentence_text"] for e in events if e["type"] == "audio.done"] == ["I have 3 cats and 12 dogs."]
        send(ws, type="session.config", **CONFIG)
        events, audio = speak(ws, ["I have three cats and twelve dogs."])
        assert np.array_equal(pcm(audio), spoken)  # the same audio as the words written out


def test_an_ssml_turn_is_spoken_part_by_part_with_its_pauses(server):
    ssml = '<speak>First part.<break time="500ms"/><lang xml:lang="de">Zweiter Teil mit 3 Hunden.</lang></speak>'
    with open_socket(server) as ws:
        send(ws, type="session.config", **CONFIG)
        events, audio = speak(ws, [ssml[:20], ssml[20:]])  # a document may come in pieces
        check_turn_with_silence(events, audio)
        texts = [e["sentence_text"] for e in events if e["type"] == "audio.start"]
        assert texts == ["First part.", "Zweiter Teil mit drei Hunden."]
        first, second = audio[0], audio[1]
        assert len(first) == (FRAMES * SAMPLES_PER_FRAME + SR // 2) * 2  # its frames, then the break
        assert not np.frombuffer(first, "<i2")[-SR // 2 :].any()
        assert len(second) == FRAMES * SAMPLES_PER_FRAME * 2
        # The socket goes on with plain turns.
        events, audio = speak(ws, words("And plain text again."))
        check_turn(events, audio, utterance=1)


def check_turn_with_silence(events: list[dict], audio: dict[int, bytes]) -> None:
    kinds = [e["type"] for e in events]
    assert kinds == ["audio.start", "audio.done", "audio.start", "audio.done", "session.done"], events
    assert all(e["total_bytes"] == len(audio[e["sentence_index"]]) for e in events if e["type"] == "audio.done")
    assert events[-1]["total_sentences"] == 2


def test_bad_ssml_is_an_error_event_and_the_socket_goes_on(server):
    with open_socket(server) as ws:
        send(ws, type="session.config", **CONFIG)
        send(ws, type="input.text", text="<speak>Unclosed <emphasis>tag</speak>")
        send(ws, type="input.done")
        error = event(ws)
        assert error["type"] == "error" and error["param"] == "text" and "line 1" in error["message"]
        done = event(ws)
        assert done["type"] == "session.done" and done["total_sentences"] == 0
        events, audio = speak(ws, words("Still here."))
        check_turn(events, audio, utterance=1)
