"""Instructions per request of each ASGI layer, counted by valgrind (immune to machine load).

``python -m benchmarks.instructions_asgi`` runs every stack of :mod:`benchmarks.bench_asgi`
under ``valgrind --tool=callgrind`` twice (``LOW`` and ``HIGH`` requests after a warm-up)
and reports ``(Ir(HIGH) - Ir(LOW)) / (HIGH - LOW)``: start-up and imports cancel out, what
is left is the cost of one request. Compare stacks by the difference to ``bare``. On the
machine these figures were taken on, ~6,700 instructions were one microsecond.

``python -m benchmarks.instructions_asgi --inner NAME N`` is what valgrind runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

LOW, HIGH = 1024, 3072
WARM_UP = 1100  # past the metrics histogram's first fold (FOLD_EVERY = 1024) and numpy import


def stacks() -> dict[str, Callable[[], tuple[Any, str | None]]]:
    """name -> () -> (ASGI app, Accept-Encoding of the client)."""
    from benchmarks.bench_asgi import _noop_pure, _starlette
    from perfkit import MemoryBackend, Registry
    from perfkit.asgi import (
        CompressionMiddleware,
        ETagMiddleware,
        ResponseCacheMiddleware,
        TimingMiddleware,
    )
    from perfkit.asgi.stack import MiddlewareStack

    def registry() -> Registry:
        return Registry(process_metrics=False)

    return {
        "bare": lambda: (_starlette(), None),
        "noop": lambda: (_noop_pure(_starlette()), None),
        "etag-sha256": lambda: (ETagMiddleware(_starlette()), None),
        "etag-xxh3": lambda: (ETagMiddleware(_starlette(), algorithm="xxh3"), None),
        "compression-identity": lambda: (CompressionMiddleware(_starlette()), "identity"),
        "timing": lambda: (TimingMiddleware(_starlette(), registry=registry()), None),
        "cache-miss": lambda: (ResponseCacheMiddleware(_starlette(), backend=MemoryBackend()),
                               None),
        "all-four": lambda: (TimingMiddleware(CompressionMiddleware(ResponseCacheMiddleware(
            ETagMiddleware(_starlette()), backend=MemoryBackend())), registry=registry()),
            "identity"),
        "all-four-xxh3": lambda: (TimingMiddleware(CompressionMiddleware(
            ResponseCacheMiddleware(ETagMiddleware(_starlette(), algorithm="xxh3"),
                                    backend=MemoryBackend())), registry=registry()),
            "identity"),
        "stack": lambda: (MiddlewareStack(_starlette(), timing={"registry": registry()},
                                          cache={"backend": MemoryBackend()}), "identity"),
        "stack-xxh3": lambda: (MiddlewareStack(
            _starlette(), timing={"registry": registry()}, cache={"backend": MemoryBackend()},
            etag={"algorithm": "xxh3"}), "identity"),
        "cache-hit": lambda: (ResponseCacheMiddleware(
            _starlette(None, "max-age=3600"), backend=MemoryBackend()), None),
    }


def inner(name: str, n: int) -> None:
    from benchmarks.bench_asgi import _scope

    app, accept = stacks()[name]()
    template = _scope("/data", accept)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    async def run(count: int) -> None:
        for _ in range(count):
            sent.clear()
            scope = dict(template)
            scope["headers"] = list(template["headers"])
            await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent[0]

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run(WARM_UP))  # memo tables, cache entries, series, imports
    loop.run_until_complete(run(n))
    loop.close()


def count(name: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-m", "benchmarks.instructions_asgi", "--inner", name, str(n)],
            check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        with open(out) as fh:
            summary = re.search(r"^summary:\s+(\d+)", fh.read(), re.M)
    assert summary is not None, "callgrind wrote no summary"
    return int(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inner", nargs=2, metavar=("NAME", "N"))
    parser.add_argument("--only", nargs="*", default=None, help="stack names")
    args = parser.parse_args()
    if args.inner:
        inner(args.inner[0], int(args.inner[1]))
        return
    names = args.only or list(stacks())
    per: dict[str, float] = {}
    for name in names:
        per[name] = (count(name, HIGH) - count(name, LOW)) / (HIGH - LOW)
    bare = per.get("bare")
    print("| stack | instructions / request | over bare |\n|---|---:|---:|")
    for name, value in per.items():
        extra = f"{value - bare:+,.0f}" if bare is not None else "n/a"
        print(f"| {name} | {value:,.0f} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
