"""The ASGI layer in front of every route: API-key check (all endpoints but /health), a request-size limit, and the
per-endpoint request counter of /metrics."""

from __future__ import annotations

import json
import secrets

from kamado.server.errors import error_body
from kamado.server.metrics import ServerMetrics

MAX_BODY_BYTES = 32 << 20
OPEN_PATHS = frozenset({"/health"})


class Guard:
    def __init__(self, app, *, api_key: str | None, metrics: ServerMetrics, known_paths: set[str]):
        self.app = app
        self.api_key = api_key
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Unknown paths share one label so that probing clients cannot grow the metrics without bound.
        endpoint = scope["path"] if scope["path"] in self.known_paths else "other"
        status = {"code": 500}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _send_json(counting_send, *refusal)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()

    def _refusal(self, scope) -> tuple[int, dict, list] | None:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get(b"x-api-key", b"").decode("latin-1")
            if not given:
                return 401, error_body(401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key"), \
                    [(b"www-authenticate", b"Bearer")]
            if not secrets.compare_digest(given.encode("utf-8"), self.api_key.encode("utf-8")):
                return 401, error_body(401, "invalid API key", code="invalid_api_key"), [(b"www-authenticate", b"Bearer")]
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return 413, error_body(413, f"request body too large: {int(length)} bytes (limit {MAX_BODY_BYTES})", code="body_too_large"), []
        return None


async def _send_json(send, status: int, body: dict, headers: list) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())] + headers})
    await send({"type": "http.response.body", "body": payload})
