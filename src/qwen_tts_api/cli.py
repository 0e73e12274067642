"""Command line: ``qwen-tts-api serve`` (the default) and ``qwen-tts-api demo-models DIR``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from .constants import MODEL_PATH_ENV, ModelKind
from .engine.models.directory import ModelDirectoryError
from .engine.models.source import resolve_sources
from .settings import Settings


def quiet_third_party_logs() -> None:
    # qwen-tts imports the `sox` package, which warns about a SoX binary we never use.
    logging.getLogger("sox").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _fail(message: str) -> int:
    print(f"qwen-tts-api: error: {message}", file=sys.stderr)
    return 2


def serve(demo: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party_logs()
    try:
        settings = Settings()
    except ValidationError as exc:
        return _fail(f"invalid environment: {exc}")
    if demo:
        settings = _with_demo_models(settings)
    try:
        # Before the heavy imports: a wrong path fails in a second (a Hub id downloads here, once).
        sources = resolve_sources(settings.model_paths())
    except ModelDirectoryError as exc:
        return _fail(str(exc))

    import uvicorn

    from .app import create_app, server_options
    from .engine.models.loading import ModelLoadError, load_models, with_profile
    from .engine.runtime.engine import Engine

    try:
        settings = with_profile(settings)
        engine = Engine.from_settings(load_models(settings, sources), settings)
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
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,  # type: ignore[arg-type]  # any seconds
        **server_options(settings),
    )
    return 0


DEMO_ALIGNER = "aligner"  # the demo aligner's directory, beside the demo models


def _with_demo_models(settings: Settings) -> Settings:
    """``serve --demo``: the demo models, built once into the data directory, instead of any
    configured model."""
    from .devtools.demo_aligner import build_aligner
    from .devtools.demo_models import build_demo_models

    directory = settings.data_dir / "demo-models"
    paths = {kind: directory / kind for kind in ModelKind}
    if not all((path / "config.json").is_file() for path in paths.values()):
        logging.getLogger(__name__).info("building the demo models once, into %s", directory)
        build_demo_models(directory, seed=0)
    aligner = directory / DEMO_ALIGNER
    if not (aligner / "config.json").is_file():
        build_aligner(aligner, seed=0)
    logging.getLogger(__name__).info(
        "serving the demo models from %s: random weights, they make noise, not speech", directory
    )
    update = {f"{kind}_model_path": str(path) for kind, path in paths.items()}
    return settings.model_copy(update={**update, "aligner_model_path": str(aligner)})


def demo_models(directory: Path, seed: int, size: str, max_frames: int | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_third_party_logs()
    from .devtools.demo_aligner import build_aligner
    from .devtools.demo_models import build_demo_models

    generation = None if max_frames is None else {"max_new_tokens": max_frames}
    paths = build_demo_models(directory, seed=seed, size=size, generation=generation)
    aligner = build_aligner(directory / DEMO_ALIGNER, seed=seed, size="tiny" if size == "tiny" else "0.6b")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(f"aligner: {aligner}")
    variables = " ".join(f"{MODEL_PATH_ENV[ModelKind(kind)]}={path}" for kind, path in paths.items())
    variables += f" ALIGNER_MODEL_PATH={aligner}"
    print(
        "\nRandom weights: they make noise, not speech. Try them with\n"
        f"  {variables} qwen-tts-api serve\n"
        "(or simply `qwen-tts-api serve --demo`)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qwen-tts-api", description="OpenAI-compatible TTS server for Qwen3-TTS")
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="run the server (configured by environment variables; see README)")
    serve_parser.add_argument(
        "--demo",
        action="store_true",
        help="serve random-weight demo models (built once into the data directory): no download, noise not speech",
    )
    demo = sub.add_parser(
        "demo-models",
        help="write random-weight CustomVoice, Base and VoiceDesign models for trying, testing and benchmarking",
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
    return serve(demo=getattr(args, "demo", False))


if __name__ == "__main__":
    sys.exit(main())
