"""Type-checked by tests/test_typing.py: decorated functions keep their signatures."""

from __future__ import annotations

from typing_extensions import assert_type

from perfkit import CacheStats, cached


@cached(ttl=10)
def add(a: int, b: int = 1) -> int:
    return a + b


@cached
async def fetch(url: str) -> bytes:
    return url.encode()


class Repo:
    @cached
    def get(self, item_id: int) -> str:
        return str(item_id)


async def use() -> None:
    assert_type(add(1, b=2), int)
    assert_type(await fetch("x"), bytes)
    assert_type(add.cache_stats(), CacheStats)
    assert_type(add.cache_invalidate(1), bool)
    assert_type(Repo().get(1), str)
    add("x")  # E: wrong argument type
    add.cache_invalidate(1, c=2)  # E: unexpected keyword


class Shapes:
    @cached
    @classmethod
    def build(cls, size: int) -> str:
        return cls.__name__ * size

    @classmethod
    @cached
    def build2(cls, size: int) -> str:
        return cls.__name__ * size


def use_shapes() -> None:
    assert_type(Shapes.build(2), str)
    assert_type(Shapes().build(2), str)
    assert_type(Shapes.build2(2), str)
    assert_type(Repo().get.cache_invalidate(1), bool)
    Shapes.build("x")  # E: wrong argument type
    Repo().get("x")  # E: wrong argument type
