"""retry, CircuitBreaker and timed keep signatures for type checkers (checked by test_typing)."""

from __future__ import annotations

from perfkit import CircuitBreaker, RetryBudget, retry, timed
from perfkit.backoff import Constant, Exponential
from perfkit.retrying import RetryState, deadline_remaining, no_waits

breaker = CircuitBreaker("typing", failure_ratio=0.5, failure_on=lambda e: "503" in str(e))


def transient(error: Exception) -> bool:
    return isinstance(error, OSError)


def log_retry(state: RetryState) -> None:
    print(state.attempt, state.wait)


@retry(on=ConnectionError, attempts=2)
def fetch(user_id: int, *, verbose: bool = False) -> str:
    return str(user_id)


@retry(on=transient, backoff=Exponential(0.1, 1) + Constant(0.2), budget=RetryBudget(0.2),
       on_retry=[log_retry], retry_on_result=lambda r: r is None, deadline=5)
async def afetch(key: str) -> bytes | None:
    return key.encode()


@timed
def plain(a: int) -> float:
    return a / 2


@timed("named", budget_ms=5)
async def named(a: int) -> int:
    return a


@breaker
def guarded(data: bytes) -> int:
    return len(data)


@breaker
async def aguarded(data: bytes) -> int:
    return len(data)


class Client:
    @retry(on=ConnectionError)
    def get(self, path: str) -> bytes:
        return path.encode()

    @retry(on=(ConnectionError, TimeoutError))
    async def aget(self, path: str) -> bytes:
        return path.encode()

    @classmethod
    @retry(on=ConnectionError)
    def create(cls, name: str) -> str:
        return name

    @staticmethod
    @timed("client.parse")
    def parse(raw: bytes) -> str:
        return raw.decode()


async def use() -> None:
    text: str = fetch(1, verbose=True)
    body0: bytes | None = await afetch("k")
    half: float = plain(3)
    number: int = await named(1)
    size: int = guarded(b"x")
    asize: int = await aguarded(b"x")
    body: bytes = Client().get("/")
    abody: bytes = await Client().aget("/")
    made: str = Client.create("c")
    parsed: str = Client.parse(b"p")
    left: float | None = deadline_remaining()
    with timed("block"), breaker, no_waits():
        pass
    async with timed("ablock"), breaker:
        pass
    print(text, body0, half, number, size, asize, body, abody, made, parsed, left)
    fetch("1")  # E: wrong argument type
    plain(1, 2)  # E: too many arguments
    guarded(b"x").upper()  # E: int has no upper
    Client().get(3)  # E: wrong argument type
    await afetch(1)  # E: wrong argument type
    await Client().aget(b"/")  # E: wrong argument type
    Client.create(2)  # E: wrong argument type
    (await aguarded(b"x")).upper()  # E: int has no upper
