"""CPU time per request of each ASGI stack, told apart by the machine's speed state.

``python -m benchmarks.asgi_states [--rounds 100] [--only NAME ...]``. This project's VM
switches each vCPU between two speeds ~1.7x apart, every half second or so (see
``benchmarks/cpu_states.py``), so a median over rounds mixes two machines. Here every
batch of requests of a stack (thread CPU time) is bracketed by a batch of the bare app
right before and right after it: the pair is kept only if the two bare batches agree
within 10% (the speed held), put in the *fast* or *slow* state by their mean (under 1.25x
or over 1.45x the fastest bare batch; pairs in between are left out), and the stack's
cost over bare is its time minus that mean. Per state: the median time per request and
the median cost over bare. The stacks are those of ``benchmarks.instructions_asgi``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from benchmarks.instructions_asgi import WARM_UP, driver, stacks

BATCH = 300  # requests per batch: 1-8 ms, well inside one speed state


def _batch(serve: Callable[[], None]) -> float:
    start = time.thread_time()
    for _ in range(BATCH):
        serve()
    return (time.thread_time() - start) / BATCH * 1e6


def measure(names: list[str], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per stack, (µs per request, the bare app's µs around it) for every kept batch."""
    bare = driver("bare")
    serves = {name: driver(name) for name in names}
    kept: dict[str, list[tuple[float, float]]] = {name: [] for name in names}

    async def main() -> None:
        for serve in (bare, *serves.values()):
            for _ in range(WARM_UP):
                serve()
        for _ in range(rounds):
            for name, serve in serves.items():
                before, own, after = _batch(bare), _batch(serve), _batch(bare)
                if max(before, after) <= 1.1 * min(before, after):
                    kept[name].append((own, (before + after) / 2))

    asyncio.run(main())
    return kept


def report(kept: dict[str, list[tuple[float, float]]]) -> str:
    fastest = min(b for pairs in kept.values() for _, b in pairs)
    lines = ["| state | stack | batches | median µs / request | bare around it | over bare |",
             "|---|---|---:|---:|---:|---:|"]
    for state, inside in (("fast", lambda b: b < 1.25 * fastest),
                          ("slow", lambda b: b > 1.45 * fastest)):
        for name, pairs in kept.items():
            chosen = [(own, b) for own, b in pairs if inside(b)]
            if not chosen:
                continue
            lines.append(
                f"| {state} | {name} | {len(chosen)} | "
                f"{statistics.median(own for own, _ in chosen):.2f} | "
                f"{statistics.median(b for _, b in chosen):.2f} | "
                f"{statistics.median(own - b for own, b in chosen):+.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--only", nargs="*", default=None, help="stack names")
    args = parser.parse_args()
    print(report(measure(args.only or [n for n in stacks() if n != "bare"], args.rounds)))


if __name__ == "__main__":
    main()
