"""``GET /``: the playground, one static page (no build step) that talks to the API."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@cache
def _page() -> str:
    return files("qwen_tts_api").joinpath("playground/index.html").read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
async def playground() -> HTMLResponse:
    # The page only calls this server; forbid everything else, including framing.
    csp = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "media-src 'self' blob: data:; img-src data:; frame-ancestors 'none'; form-action 'none'"
    )
    return HTMLResponse(_page(), headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"})
