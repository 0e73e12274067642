"""Command line: ``qwen-tts-api serve`` (the default) and ``qwen-tts-api demo-models DIR``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from .engine.model_dir import ModelDirectoryError, check_configured_models
from .settings import Settings


def quiet_third_party_logs() -> None:
    # qwen-tts imports the `sox` package, which warns about a SoX binary we never use.
    logging.getLogger("sox").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _fail(message: str) -> int:
    print(f"qwen-tts-api: error: {message}", file=sys.stderr)
    return 2


def serve() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party_logs()
    try:
        settings = Settings()
    except ValidationError as exc:
        return _fail(f"invalid environment: {exc}")
    try:
        # Cheap file checks before the heavy imports: a wrong path fails in a second.
        check_configured_models(settings.model_paths())
    except ModelDirectoryError as exc:
        return _fail(str(exc))

    import uvicorn

    from .app import create_app
    from .engine.jobs import EngineConfig
    from .engine.loading import ModelLoadError, load_models
    from .engine.synthesis import Engine

    try:
        engine = Engine(load_models(settings), EngineConfig.from_settings(settings))
    except ModelLoadError as exc:
        return _fail(str(exc))
    # On SIGTERM/SIGINT uvicorn stops accepting, lets in-flight requests (streams included)
    # finish for up to QWEN_TTS_SHUTDOWN_TIMEOUT seconds, then exits. Our request log
    # replaces uvicorn's access log.
    uvicorn.run(
        create_app(settings, engine),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    return 0


def demo_models(directory: Path, seed: int, size: str, max_frames: int | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_third_party_logs()
    from .engine.demo_models import build_demo_models

    generation = None if max_frames is None else {"max_new_tokens": max_frames}
    paths = build_demo_models(directory, seed=seed, size=size, generation=generation)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(
        "\nRandom weights: they make noise, not speech. Try them with\n"
        f"  CUSTOMVOICE_MODEL_PATH={paths['customvoice']} BASE_MODEL_PATH={paths['base']} \\\n"
        "  QWEN_TTS_DEVICE=cpu QWEN_TTS_ATTN= qwen-tts-api serve"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qwen-tts-api", description="OpenAI-compatible TTS server for Qwen3-TTS")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the HTTP server (configured by environment variables; see README)")
    demo = sub.add_parser(
        "demo-models", help="write random-weight CustomVoice and Base models for trying, testing and benchmarking"
    )
    demo.add_argument("directory", type=Path)
    demo.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same output)")
    demo.add_argument(
        "--size",
        choices=["tiny", "0.6b", "1.7b"],
        default="tiny",
        help="tiny (seconds to build; what the tests use) or a published configuration, for benchmarks",
    )
    demo.add_argument(
        "--max-frames",
        type=int,
        metavar="N",
        help="write N as the generation budget (random weights never end on their own: a fixed length)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo-models":
        if args.max_frames is not None and args.max_frames < 1:
            parser.error("--max-frames must be at least 1")
        return demo_models(args.directory, args.seed, args.size, args.max_frames)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
