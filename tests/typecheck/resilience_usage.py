"""retry, CircuitBreaker and timed keep signatures for type checkers (checked by test_typing)."""

from __future__ import annotations

from perfkit import CircuitBreaker, retry, timed

breaker = CircuitBreaker("typing")


@retry(on=ConnectionError, attempts=2)
def fetch(user_id: int, *, verbose: bool = False) -> str:
    return str(user_id)


@timed
def plain(a: int) -> float:
    return a / 2


@timed("named", budget_ms=5)
async def named(a: int) -> int:
    return a


@breaker
def guarded(data: bytes) -> int:
    return len(data)


class Client:
    @retry(on=ConnectionError)
    def get(self, path: str) -> bytes:
        return path.encode()


async def use() -> None:
    text: str = fetch(1, verbose=True)
    half: float = plain(3)
    number: int = await named(1)
    size: int = guarded(b"x")
    body: bytes = Client().get("/")
    with timed("block"):
        pass
    print(text, half, number, size, body)
    fetch("1")  # E: wrong argument type
    plain(1, 2)  # E: too many arguments
    guarded(b"x").upper()  # E: int has no upper
    Client().get(3)  # E: wrong argument type
