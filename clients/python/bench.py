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

t_imported = time.perf_counter()


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
    parser.add_argument("--http2", action="store_true", help="speak HTTP/2 (needs the h2 package)")
    args = parser.parse_args()

    net = plexus.Network.from_connect_file(args.connect, http2=args.http2)
    study = net.study(args.study or net.connect_info.get("studies", {}).get("exact", "aaa-validation"))
    first = study.count()
    t_first = time.perf_counter()
    print(f"plexus-client {plexus.__version__}, {net.url}, study {study.id}")
    print(f"import plexus -> first count ({first.n}): {(t_first - t_start) * 1000:.1f} ms "
          f"(import {(t_imported - t_start) * 1000:.1f} ms, connect, study and count {(t_first - t_imported) * 1000:.1f} ms)")
    # Cohorts as trees (what the gRPC CLI sends), distinct so that no cache answers.
    ages = iter(range(10**6))

    def older(offset: int) -> dict:
        return {"compare": {"variable": "age", "op": ">=", "value": offset + next(ages) % 25}}

    logistic = {"glm": {"family": "binomial", "outcome": "death", "covariates": ["age", "smoking", "diabetes"]}}
    counts = timed(lambda: study.count(older(55)), args.n)
    print(line("count", counts))
    rounds = []

    def fit() -> None:
        r = study.analysis(logistic, where=older(55))
        rounds.extend(r.provenance.round_ms)

    fits = timed(fit, args.n)
    print(line("logistic glm", fits))
    if rounds:
        print(f"logistic glm: {len(rounds) / args.n:.1f} rounds a fit, median round {statistics.median(rounds)} ms "
              "at the coordinator")


if __name__ == "__main__":
    main()
