"""Request-scoped timing spans for ``Server-Timing``, carried by a context variable.

A collector (``TimingMiddleware``) opens a span list for one request with :func:`collect`;
code running inside that request (the handler, ``perfkit.timed`` functions, the response
cache) adds spans with :func:`span` or :func:`record_span`. Outside a collecting request
both are a context-variable read and nothing else. Sync handlers run by Starlette in a
worker thread see the same list (the context is copied, the list is shared).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

MAX_SPANS = 64
"""Spans kept per request; further spans are dropped (a loop must not grow a header)."""

Span = tuple[str, float, str | None]
_SPANS: ContextVar[list[Span] | None] = ContextVar("perfkit_spans", default=None)
_NOT_TOKEN = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")


def collect() -> tuple[list[Span], Token[list[Span] | None]]:
    """Start collecting in the current context: ``(spans, token)``; pass token to :func:`stop`."""
    spans: list[Span] = []
    return spans, _SPANS.set(spans)


def stop(token: Token[list[Span] | None]) -> None:
    _SPANS.reset(token)


def record_span(name: str, seconds: float, desc: str | None = None) -> None:
    """Add a finished span to the current request, if one is collecting."""
    spans = _SPANS.get()
    if spans is not None and len(spans) < MAX_SPANS:
        spans.append((name, seconds, desc))


@contextmanager
def span(name: str, desc: str | None = None) -> Iterator[None]:
    """Time the ``with`` block as a Server-Timing span (``with span("db"): ...``)."""
    if _SPANS.get() is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        record_span(name, time.perf_counter() - start, desc)


def format_server_timing(spans: list[Span]) -> str:
    """``name;dur=1.2;desc="..."`` entries (names forced to tokens, dur in milliseconds)."""
    parts = []
    for name, seconds, desc in spans:
        entry = f"{_NOT_TOKEN.sub('_', name) or 'span'};dur={seconds * 1000:.3f}"
        if desc:
            entry += ';desc="' + desc.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(entry)
    return ", ".join(parts)
