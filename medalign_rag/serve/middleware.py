"""Plain ASGI middleware for the server's safety rules; each is small and does one thing.

- AccessLogMiddleware: one log line per request with the method, the route *template* and the status, never
  the concrete path or query (they carry patient ids and dates) nor any body; unexpected errors become a 500
  JSON answer and a log line with the exception's type only (messages can quote a record or a question).
- SecurityHeadersMiddleware: `Cache-Control: no-store` and a Content-Security-Policy allowing only 'self'.
- BodySizeLimitMiddleware: 413 for a body over the cap, before anything parses it.
- BearerTokenMiddleware: with a token set, /api requests need `Authorization: Bearer <token>` (constant-time).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.routing import Match

ASGIApp = Any
Scope = dict[str, Any]

# The page's policy: nothing from another origin, no inline script or style, no framing.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles; still nothing from another origin.
DOCS_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


async def _send_json(send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": payload})


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, logger: logging.Logger, routes: Callable[[], list] = list) -> None:
        self.app = app
        self.logger = logger
        #: The app's routes, to name the template of a request refused before routing (401, 413).
        self.routes = routes

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as error:  # noqa: BLE001 - the last line of defence: answer, log the type, stay up
            self.logger.error("unexpected %s on %s %s", type(error).__name__, scope.get("method"),
                              self._template(scope))
            if not state["started"]:
                await _send_json(send_and_note, 500, {"detail": "internal error; the server log has the error type"})
        finally:
            self.logger.info("%s %s %d %.1fms", scope.get("method"), self._template(scope), state["status"],
                             (time.perf_counter() - started) * 1000)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes() if r.matches(scope)[0] == Match.FULL), None)
        template = getattr(route, "path", None)
        if template is None:
            # Static mounts: the folder, not the file; anything unrouted: a fixed word.
            path = scope.get("path", "")
            for prefix in ("/static/", "/docs-assets/"):
                if path.startswith(prefix):
                    return prefix + "*"
            return "(unmatched)"
        if getattr(route, "app", None) is not None and not hasattr(route, "endpoint"):
            return template + "/*"  # a Mount: its own path plus whatever file
        return template


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope.get("path") == "/docs" else PAGE_CSP

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers += [
                    (b"cache-control", b"no-store"),
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimitMiddleware:
    """Reads the whole body (it is small by design) and hands it on, or answers 413 once it passes the cap."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = {"detail": f"request body over {self.max_bytes} bytes"}
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, too_large)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # afterwards: disconnect notices for streaming answers

        await self.app(scope, replay, send)


class BearerTokenMiddleware:
    def __init__(self, app: ASGIApp, token: str | None, protected_prefix: str = "/api/") -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.prefix = protected_prefix

    async def __call__(self, scope: Scope, receive, send) -> None:
        if self.expected is None or scope["type"] != "http" or not scope.get("path", "").startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            await _send_json(send, 401, {"detail": "missing or wrong token: send Authorization: Bearer <token>"},
                             [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)
