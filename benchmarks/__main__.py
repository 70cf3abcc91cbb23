"""Run every benchmark of the project in one process: ``python -m benchmarks``.

Options: ``--rounds N`` (default 15), ``--only SUBSTRING`` (module or group filter).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform

from benchmarks.harness import Case, Unavailable, run_cases, table


def collect(only: str | None) -> list[Case]:
    import benchmarks

    cases: list[Case] = []
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        if only and only not in info.name:
            continue
        try:
            module = importlib.import_module(f"benchmarks.{info.name}")
            cases.extend(module.cases())
        except Unavailable as exc:
            cases.append(Case.unavailable(info.name, "(all cases)", str(exc)))
        except ImportError as exc:
            cases.append(Case.unavailable(info.name, "(all cases)", f"import failed: {exc}"))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    cases = collect(args.only)
    print(f"# perfkit benchmarks — {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {args.rounds} interleaved rounds")
    run_cases(cases, rounds=args.rounds)
    print(table(cases))


if __name__ == "__main__":
    main()
