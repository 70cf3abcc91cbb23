"""Type-checked by tests/test_typing.py: cache_warm is awaitable exactly for async functions."""

from __future__ import annotations

from typing_extensions import assert_type

from perfkit import cached
from perfkit.caching import WarmReport


@cached(ttl=10)
def add(a: int, b: int = 1) -> int:
    return a + b


@cached
async def fetch(url: str) -> bytes:
    return url.encode()


async def use() -> None:
    assert_type(add.cache_warm([1, 2]), WarmReport)
    assert_type(await fetch.cache_warm(["a"]), WarmReport)
    assert_type(await add.acache_warm([1], concurrency=2), WarmReport)
    assert_type(await fetch.acache_warm(["a"]), WarmReport)
    add.cache_warm([1], concurrency="2")  # E: wrong type for concurrency
    await add.cache_warm([1])  # E: a sync function's report is not awaitable
