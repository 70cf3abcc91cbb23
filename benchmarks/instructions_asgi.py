"""Instructions per request of each ASGI layer, counted by valgrind (immune to machine load).

``python -m benchmarks.instructions_asgi [--only NAME ...]`` runs each stack under
``valgrind --tool=callgrind`` (two at a time), counting only inside the measured loop: the
requests are served from within ``functools.reduce`` and callgrind collects only while
that C function runs (``--toggle-collect``), so start-up, imports and the warm-up are not
counted. Each request's coroutine is driven to completion with ``send(None)`` inside a
running event loop (nothing in these stacks suspends; a stack that did would fail loudly).
Compare stacks by the difference to ``bare``. On the machine these figures were taken on,
~6,700-7,700 instructions were one microsecond of a quiet core.

``python -m benchmarks.instructions_asgi --inner NAME N`` is what valgrind runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

REQUESTS = 1000
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
        "etag-xxh3": lambda: (ETagMiddleware(_starlette()), None),
        "etag-sha256": lambda: (ETagMiddleware(_starlette(), algorithm="sha256"), None),
        "compression-identity": lambda: (CompressionMiddleware(_starlette()), "identity"),
        "timing": lambda: (TimingMiddleware(_starlette(), registry=registry()), None),
        "cache-miss": lambda: (ResponseCacheMiddleware(_starlette(), backend=MemoryBackend()),
                               None),
        "all-four": lambda: (TimingMiddleware(CompressionMiddleware(ResponseCacheMiddleware(
            ETagMiddleware(_starlette()), backend=MemoryBackend())), registry=registry()),
            "identity"),
        "stack": lambda: (MiddlewareStack(_starlette(), timing={"registry": registry()},
                                          cache={"backend": MemoryBackend()}), "identity"),
        "cache-hit": lambda: (ResponseCacheMiddleware(
            _starlette(None, "max-age=3600"), backend=MemoryBackend()), None),
    }


def driver(name: str) -> Callable[..., None]:
    """One request of stack ``name`` per call, driven without an event loop's help (the
    stacks never suspend); checks the response started with a 200."""
    from benchmarks.bench_asgi import _scope

    app, accept = stacks()[name]()
    template = _scope("/data", accept)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    def serve(_: Any = None, __: Any = None) -> None:  # reduce's (total, item)
        sent.clear()
        scope = dict(template)
        scope["headers"] = list(template["headers"])
        request = app(scope, receive, send)
        try:
            request.send(None)
        except StopIteration:
            pass
        else:
            raise RuntimeError(f"{name} suspended: drive it with an event loop instead")
        assert sent[0]["status"] == 200, sent[0]

    return serve


def inner(name: str, n: int) -> None:
    serve = driver(name)

    async def main() -> None:
        for _ in range(WARM_UP):  # memo tables, cache entries, series, imports
            serve()
        functools.reduce(serve, range(n), None)  # the only part callgrind counts

    asyncio.run(main())


def count(name: str, n: int = REQUESTS) -> float:
    """Instructions per request of stack ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=functools_reduce", f"--callgrind-out-file={out}",
             sys.executable, "-m", "benchmarks.instructions_asgi", "--inner", name, str(n)],
            check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        with open(out) as fh:
            summary = re.search(r"^summary:\s+(\d+)", fh.read(), re.M)
    assert summary is not None, "callgrind wrote no summary"
    return int(summary.group(1)) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inner", nargs=2, metavar=("NAME", "N"))
    parser.add_argument("--only", nargs="*", default=None, help="stack names")
    args = parser.parse_args()
    if args.inner:
        inner(args.inner[0], int(args.inner[1]))
        return
    names = args.only or list(stacks())
    with ThreadPoolExecutor(2) as pool:
        per = dict(zip(names, pool.map(count, names)))
    bare = per.get("bare")
    print("| stack | instructions / request | over bare |\n|---|---:|---:|")
    for name, value in per.items():
        extra = f"{value - bare:+,.0f}" if bare is not None else "n/a"
        print(f"| {name} | {value:,.0f} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
