"""A local HTTP server that serves reference audio, redirects, stalls and oversize bodies."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ReferenceHTTPServer:
    def __init__(self, audio: bytes):
        audio_bytes = audio

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                port = self.server.server_address[1]
                if self.path == "/ref.wav":
                    self._send(200, audio_bytes, {"Content-Type": "audio/wav"})
                elif self.path == "/redirect":
                    self._send(302, headers={"Location": "/ref.wav"})
                elif self.path == "/redirect-elsewhere":
                    self._send(302, headers={"Location": f"http://127.0.0.2:{port}/ref.wav"})
                elif self.path == "/loop":
                    self._send(302, headers={"Location": "/loop"})
                elif self.path == "/slow":
                    time.sleep(3)
                    self._send(200, audio_bytes)
                elif self.path == "/big":
                    self._send(200, b"\0" * 300_000)
                elif self.path == "/garbage":
                    self._send(200, b"this is not audio" * 500)
                else:
                    self._send(404, b"missing")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ReferenceHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
