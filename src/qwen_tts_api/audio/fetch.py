"""Fetches reference audio from a URL without becoming an SSRF proxy.

Each hop's host is resolved first and every address checked; the connection then goes
to the checked address (Host header and TLS SNI keep the name), so a second DNS answer
cannot swap in an internal one. Redirects are followed by hand and checked again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin

import httpx

from ..text.echo import quoted
from .reference import AudioSampleError

MAX_REDIRECTS = 3


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_private:
        return not ip.is_unspecified
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AudioSampleError(f"audio_sample URL host {quoted(host)} could not be resolved") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _checked_address(url: httpx.URL, allow_private: bool) -> str:
    if url.scheme not in ("http", "https") or not url.host:
        raise AudioSampleError("audio_sample URL must be http:// or https://")
    addresses = await _resolve(url.host, url.port or (443 if url.scheme == "https" else 80))
    refused = [a for a in addresses if not address_allowed(a, allow_private)]
    if refused or not addresses:
        raise AudioSampleError(
            f"audio_sample URL host {quoted(url.host)} resolves to a private or reserved address; "
            "set QWEN_TTS_ALLOW_PRIVATE_URLS=true to allow local addresses"
        )
    return addresses[0]


async def _get(client: httpx.AsyncClient, url: httpx.URL, address: str, max_bytes: int) -> httpx.Response | bytes:
    """One hop: the response if it redirects, else the body (size-capped)."""
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    request = client.build_request(
        "GET", url.copy_with(host=address), headers={"Host": url.netloc.decode("ascii")}, extensions=extensions
    )
    response = await client.send(request, stream=True)
    try:
        if response.is_redirect:
            return response
        if response.status_code != 200:
            raise AudioSampleError(f"audio_sample URL returned HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise AudioSampleError(f"audio_sample is larger than {max_bytes} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > max_bytes:
                raise AudioSampleError(f"audio_sample is larger than {max_bytes} bytes")
        return bytes(body)
    finally:
        await response.aclose()


async def fetch_audio_url(url: str, *, allow_private: bool, timeout: float, max_bytes: int) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout) as client:
                current = httpx.URL(url)
                for _ in range(MAX_REDIRECTS + 1):
                    address = await _checked_address(current, allow_private)
                    result = await _get(client, current, address, max_bytes)
                    if isinstance(result, bytes):
                        return result
                    current = httpx.URL(urljoin(str(current), result.headers.get("location", "")))
                raise AudioSampleError(f"audio_sample URL redirected more than {MAX_REDIRECTS} times")
    except TimeoutError as exc:
        raise AudioSampleError(f"audio_sample URL did not answer within {timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise AudioSampleError(f"audio_sample URL could not be fetched ({type(exc).__name__})") from exc
    except httpx.InvalidURL as exc:
        raise AudioSampleError("audio_sample URL is not a valid URL") from exc
