"""A far end on loopback for local-runtime tests: records every request on arrival, answers "ok";
``/slow...`` answers only after ``SLOW_SECONDS`` (work still under way when a caller is stopped)."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar


class FarEnd(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []
    SLOW_SECONDS = 1.5

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        if self.path.startswith("/slow"):
            time.sleep(self.SLOW_SECONDS)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""
