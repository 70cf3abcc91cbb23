"""A fake clock for the retry and circuit-breaker tests: time moves only when told to."""

from __future__ import annotations


class FakeClock:
    """Call it for the time; ``sleep``/``asleep`` record the wait and move time forward."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
