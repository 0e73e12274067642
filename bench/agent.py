"""A voice agent's turn: text arriving from a language model at --rate tokens a second, spoken
two ways against the same server (its own process), side by side in one run.

  websocket  one socket on /v1/audio/speech/stream: each token sent as it arrives, input.done
             after the last. Speech starts at the first clause and reads the rest as it comes.
  http       what agents do without it: the client cuts the text into sentences and sends
             each complete sentence as its own streaming POST /v1/audio/speech (pcm), one after
             another (a sentence waits for the one before it to finish, so audio stays in order).
  clause     reference: one streaming HTTP request for the first clause alone, on an idle
             server (the fastest any client could hear that clause).

Figures, medians over --runs:
  first audio   from the moment the first clause is complete on the client to its first audio
                byte (websocket and http; clause: from its request).
  last audio    from the first token to the last audio byte.
  audio         seconds of audio received (the random demo models stop at each request's frame
                budget, which grows with its text: one generation for the turn makes less
                trailing audio than one per sentence, so compare "last audio" with it in view).

    uv run python bench/agent.py --model demo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path

import httpx
import websockets
from latency import (  # noqa: E402 (sibling script)
    ATTN,
    SAMPLE_RATE,
    add_model_arguments,
    build,
    cpu_model,
    save_json,
    server_process,
)

from qwen_tts_api.text.live import Part

TURN = (
    "Sure, I can help with that. Your order left our warehouse this morning and should arrive on "
    "Thursday. If you are not home, the driver will leave it with a neighbour. Is there anything "
    "else you would like to know about it?"
)
SENTENCE_END = re.compile(r"[.!?]$")
CONFIG = {"type": "session.config", "voice": "vivian", "language": "English", "response_format": "pcm"}


def tokens_of(text: str) -> list[str]:
    """Roughly what a language model streams: words (with their leading space) and punctuation."""
    return re.findall(r" ?\w+|[^\w\s]+", text)


def first_clause_tokens(tokens: list[str]) -> int:
    """How many tokens complete the first clause (the moment the websocket may start speaking)."""
    for count in range(1, len(tokens) + 1):
        if Part("".join(tokens[:count]) + " ").ready:
            return count
    return len(tokens)


async def arrive(tokens: list[str], rate: float):
    """Yield (index, token) at ``rate`` tokens a second from now."""
    started = time.perf_counter()
    for index, token in enumerate(tokens):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield index, token


async def websocket_turn(url: str, tokens: list[str], rate: float) -> dict:
    clause_at = first_clause_tokens(tokens)
    ws_url = url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps({**CONFIG, "stream_audio": True}))
        marks: dict[str, float] = {}

        async def send() -> None:
            async for index, token in arrive(tokens, rate):
                if index == 0:
                    marks["start"] = time.perf_counter()
                await ws.send(json.dumps({"type": "input.text", "text": token}))
                if index + 1 == clause_at:
                    marks["clause"] = time.perf_counter()
            await ws.send(json.dumps({"type": "input.done"}))

        sender = asyncio.create_task(send())
        first = last = None
        received = 0
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                now = time.perf_counter()
                first = first or now
                last = now
                received += len(message)
                continue
            event = json.loads(message)
            if event["type"] == "error":
                raise RuntimeError(event)
            if event["type"] == "session.done":
                break
        await sender
    return {
        "first_audio": first - marks["clause"],
        "last_audio": last - marks["start"],
        "audio": received / 2 / SAMPLE_RATE,
    }


async def speak_http(http: httpx.AsyncClient, url: str, text: str) -> tuple[float, float, int]:
    """One streaming request: (first byte time, last byte time, bytes)."""
    body = {"model": "qwen3-tts", "input": text, "voice": "vivian", "response_format": "pcm", "stream": True}
    first = last = None
    received = 0
    async with http.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            if chunk:
                now = time.perf_counter()
                first = first or now
                last = now
                received += len(chunk)
    return first, last, received


async def http_turn(url: str, tokens: list[str], rate: float) -> dict:
    clause_at = first_clause_tokens(tokens)
    sentences: asyncio.Queue[str | None] = asyncio.Queue()
    marks: dict[str, float] = {}

    async def cut() -> None:
        buffer = ""
        async for index, token in arrive(tokens, rate):
            if index == 0:
                marks["start"] = time.perf_counter()
            if index + 1 == clause_at:
                marks["clause"] = time.perf_counter()
            buffer += token
            if SENTENCE_END.search(token.strip()):
                await sentences.put(buffer.strip())
                buffer = ""
        if buffer.strip():
            await sentences.put(buffer.strip())
        await sentences.put(None)

    cutter = asyncio.create_task(cut())
    first = last = None
    received = 0
    async with httpx.AsyncClient(timeout=600) as http:
        while (sentence := await sentences.get()) is not None:
            start, end, size = await speak_http(http, url, sentence)
            first = first or start
            last = end
            received += size
    await cutter
    return {
        "first_audio": first - marks["clause"],
        "last_audio": last - marks["start"],
        "audio": received / 2 / SAMPLE_RATE,
    }


async def clause_alone(url: str, tokens: list[str]) -> dict:
    clause = "".join(tokens[: first_clause_tokens(tokens)]).strip()
    async with httpx.AsyncClient(timeout=600) as http:
        started = time.perf_counter()
        first, last, size = await speak_http(http, url, clause)
    return {"first_audio": first - started, "last_audio": last - started, "audio": size / 2 / SAMPLE_RATE}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.set_defaults(frames=2048)  # the per-request budget from the text decides, as in production
    parser.add_argument("--rate", type=float, default=15.0, help="tokens a second from the language model")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    directory = args.model_dir or Path("/tmp/qwen-tts-bench-agent")
    directory.mkdir(parents=True, exist_ok=True)
    path = build(args.model, args.frames, directory)
    variant = (args.servers or ["auto"])[0]
    tokens = tokens_of(TURN)
    results: dict[str, list[dict]] = {"clause": [], "http": [], "websocket": []}
    with server_process(path, args.device, variant, ATTN) as url:
        asyncio.run(websocket_turn(url, tokens[:12], 100.0))  # warm both paths once
        asyncio.run(http_turn(url, tokens[:12], 100.0))
        for _ in range(args.runs):  # interleaved, so drift on a noisy machine hits all three alike
            results["clause"].append(asyncio.run(clause_alone(url, tokens)))
            results["http"].append(asyncio.run(http_turn(url, tokens, args.rate)))
            results["websocket"].append(asyncio.run(websocket_turn(url, tokens, args.rate)))

    print(
        f"\nmodel={args.model} device={args.device} server={variant} rate={args.rate} tokens/s "
        f"tokens={len(tokens)} first clause={first_clause_tokens(tokens)} tokens runs={args.runs} cpu={cpu_model()}"
    )
    print(f"{'way':<11}{'first audio s':>15}{'last audio s':>14}{'audio s':>9}")
    summary = {}
    for name, runs in results.items():
        row = {key: statistics.median(r[key] for r in runs) for key in ("first_audio", "last_audio", "audio")}
        summary[name] = row
        print(f"{name:<11}{row['first_audio']:>15.3f}{row['last_audio']:>14.3f}{row['audio']:>9.2f}")
    ws, http, clause = summary["websocket"], summary["http"], summary["clause"]
    first_ratio, last_ratio = ws["first_audio"] / clause["first_audio"], ws["last_audio"] / http["last_audio"]
    print(f"\nwebsocket first audio / clause request alone: {first_ratio:.2f}x (target <= 1.2)")
    print(f"websocket last audio / sentence-by-sentence http: {last_ratio:.2f}x (target <= 0.8)")
    if args.json:
        save_json(args, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
