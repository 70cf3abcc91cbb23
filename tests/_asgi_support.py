"""Helpers for the ASGI tests: a raw ASGI driver (to see every message) and tiny apps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def http_scope(path: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None,
               query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query, "root_path": "",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in (headers or [])],
        "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
    }


async def drive(app: App, scope: dict[str, Any], body: bytes = b"",
                incoming: list[Message] | None = None) -> list[Message]:
    """Run ``app`` once; return every message it sent, in order."""
    sent: list[Message] = []
    queue = list(incoming) if incoming is not None else [
        {"type": "http.request", "body": body, "more_body": False}
    ]

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def raw_app(messages: list[Message]) -> App:
    """An ASGI app that sends exactly ``messages`` (copied) for every request."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        for message in messages:
            copy = dict(message)
            if "headers" in copy:
                copy["headers"] = list(copy["headers"])
            await send(copy)

    return app


def start(status: int = 200, headers: list[tuple[str, str]] | None = None) -> Message:
    return {"type": "http.response.start", "status": status,
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or [])]}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


def header(message: Message, name: str) -> str | None:
    for key, value in message["headers"]:
        if key.decode().lower() == name:
            return str(value.decode("latin-1"))
    return None
