#!/usr/bin/env python3
"""Times the Python client over HTTP, for comparison with the gRPC CLI.

Prints the time from ``import plexus`` to the first count result, then the
median (and min/max) of N counts and N logistic fits on the exact study.

    python clients/python/bench.py --connect demo/connect.json [-n 20] [--study aaa-validation]
"""

from __future__ import annotations

import argparse
import statistics
import time

t_start = time.perf_counter()
import plexus  # noqa: E402  (timed on purpose)


def timed(fn, n: int):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def line(name: str, times) -> str:
    return (f"{name:<24} n={len(times):<3} median {statistics.median(times):8.1f} ms   "
            f"min {min(times):8.1f} ms   max {max(times):8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="demo/connect.json", help="the demo's connect.json")
    parser.add_argument("--study", default=None, help="study id (default: the connect file's exact study)")
    parser.add_argument("-n", type=int, default=20, help="repetitions of each query")
    parser.add_argument("--formula", default="death ~ age + smoking + diabetes")
    args = parser.parse_args()

    net = plexus.Network.from_connect_file(args.connect)
    study = net.study(args.study or net.connect_info.get("studies", {}).get("exact", "aaa-validation"))
    first = study.count()
    t_first = time.perf_counter()
    print(f"plexus-client {plexus.__version__}, {net.url}, study {study.id}")
    print(f"import plexus -> first count ({first.n}): {(t_first - t_start) * 1000:.1f} ms")
    # Distinct cohorts so that a cache at the coordinator or the nodes does not answer.
    ages = iter(range(10**6))
    counts = timed(lambda: study.count(f"age >= {40 + next(ages) % 50}"), args.n)
    print(line("count", counts))
    fits = timed(lambda: study.glm(args.formula, family="binomial", where=f"age >= {30 + next(ages) % 40}"), args.n)
    print(line("logistic glm", fits))
    rounds = [round(statistics.median(study.glm(args.formula, family="binomial").provenance.round_ms or [0]), 1)]
    print(f"logistic glm: median round at the coordinator {rounds[0]} ms")


if __name__ == "__main__":
    main()
