"""perfkit in one minute, in-process (no server needed): python examples/quickstart.py"""

from __future__ import annotations

import asyncio
import threading
import time

import perfkit


@perfkit.cached(ttl=60)
def exchange_rate(base: str, quote: str = "EUR") -> float:
    time.sleep(0.05)  # a slow upstream call
    return 1.08 if base == "USD" else 1.0


@perfkit.cached(ttl=60)
async def profile(user_id: int) -> dict[str, object]:
    await asyncio.sleep(0.05)
    return {"id": user_id, "name": f"user-{user_id}"}


def main() -> None:
    start = time.perf_counter()
    exchange_rate("USD")
    cold = time.perf_counter() - start
    assert exchange_rate("USD", quote="EUR") == 1.08  # same call, spelled differently: a hit
    start = time.perf_counter()
    for _ in range(10_000):
        exchange_rate("USD")
    warm = (time.perf_counter() - start) / 10_000
    print(f"cached: cold call {cold * 1e3:.1f} ms, warm call {warm * 1e6:.2f} µs")

    # 50 threads ask for the same cold key at once: the upstream is called once.
    threads = [threading.Thread(target=exchange_rate, args=("GBP",)) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = exchange_rate.cache_stats()
    print(f"cached: {stats.misses} computations for {stats.hits + stats.misses + stats.joins} "
          f"calls, hit rate {stats.hit_rate:.0%}, time saved {stats.time_saved * 1e3:.0f} ms")

    async def burst() -> None:
        results = await asyncio.gather(*(profile(7) for _ in range(100)))
        assert all(r == results[0] for r in results)

    asyncio.run(burst())
    print(f"cached (async): 100 concurrent calls, {profile.cache_stats().misses} computation")


if __name__ == "__main__":
    main()
