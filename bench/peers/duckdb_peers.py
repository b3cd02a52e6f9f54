"""The peers' benchmark query in DuckDB, with every site's rows in one place.

Called by `plexus-bench peers` with one JSON argument; prints one JSON
object. The query: patients whose consent covers the study's purpose today
and who have not opted out, aged 50 or more; count, sum, mean and standard
deviation of age and systolic pressure, and their histograms on the public
edges Plexus uses. DuckDB gets every advantage: the consent records as
Parquet (converted before any timing), the consent rule as the list of
consent terms that cover the purpose, and a warm page cache.
"""

import json
import resource
import sys
import time

import duckdb


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bin_code(column, edges):
    """Bin codes as Plexus counts them: bins closed on the left, the last
    one closed on both sides; -1 below the first edge, len(edges)-1 above."""
    whens = []
    last = len(edges) - 2
    for i in range(len(edges) - 1):
        hi = "<=" if i == last else "<"
        whens.append(f"WHEN {column} >= {edges[i]!r} AND {column} {hi} {edges[i + 1]!r} THEN {i}")
    return (
        f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} < {edges[0]!r} THEN -1 "
        + " ".join(whens)
        + f" ELSE {len(edges) - 1} END"
    )


def main():
    args = json.loads(sys.argv[1])
    work = args["work"]
    sites = args["sites"]
    terms = args["covering_terms"]
    today = args["today"]
    age_edges = args["age_edges"]
    sbp_edges = args["sbp_edges"]
    reps = args["repetitions"]

    con = duckdb.connect()
    # Untimed preparation: consent and opt-out records as Parquet.
    for i, s in enumerate(sites):
        con.execute(
            f"COPY (SELECT patient_id, purposes, CAST(valid_from AS DATE) AS valid_from, "
            f"CAST(withdrawn_at AS DATE) AS withdrawn_at "
            f"FROM read_csv('{s['consent']}', all_varchar=true)) "
            f"TO '{work}/consent-{i}.parquet' (FORMAT parquet)"
        )
        con.execute(
            f"COPY (SELECT patient_id FROM read_csv('{s['opt_out']}', all_varchar=true)) "
            f"TO '{work}/opt_out-{i}.parquet' (FORMAT parquet)"
        )
    con.close()

    def consenting():
        parts = []
        for i, s in enumerate(sites):
            p = f"read_parquet('{s['data']}')"
            c = f"read_parquet('{work}/consent-{i}.parquet')"
            o = f"read_parquet('{work}/opt_out-{i}.parquet')"
            parts.append(
                f"SELECT p.age_years AS age, p.systolic_bp AS sbp FROM {p} p "
                f"JOIN {c} c ON c.patient_id = p.patient_id "
                f"WHERE c.purposes IN ({', '.join(repr(t) for t in terms)}) "
                f"AND c.valid_from <= DATE '{today}' "
                f"AND (c.withdrawn_at IS NULL OR c.withdrawn_at > DATE '{today}') "
                f"AND p.patient_id NOT IN (SELECT patient_id FROM {o})"
            )
        return " UNION ALL ".join(parts)

    def query(con, in_memory):
        # One statement, one pass over the rows.
        rows = "consenting" if in_memory else f"({consenting()})"
        row = con.execute(
            f"SELECT count(age), sum(age), avg(age), stddev_samp(age), "
            f"count(sbp), sum(sbp), avg(sbp), stddev_samp(sbp), "
            f"histogram({bin_code('age', age_edges)}), "
            f"histogram({bin_code('sbp', sbp_edges)}) "
            f"FROM {rows} WHERE age >= 50"
        ).fetchone()
        hist = {
            name: {int(b): int(n) for b, n in (row[i] or {}).items()}
            for name, i in (("age", 8), ("sbp", 9))
        }
        return row[:8], hist

    def timed(con, in_memory):
        t0, c0 = time.perf_counter(), cpu_seconds()
        answer = query(con, in_memory)
        return answer, time.perf_counter() - t0, cpu_seconds() - c0

    # A fresh connection's first query, then repeats on the open one.
    t0, c0 = time.perf_counter(), cpu_seconds()
    con = duckdb.connect()
    answer, _, _ = timed(con, False)
    first = (time.perf_counter() - t0, cpu_seconds() - c0)
    runs = [timed(con, False) for _ in range(reps)]
    files_peak = peak_mib()

    # The floor: the consenting patients' two columns already in memory
    # (consent decided beforehand, as a Plexus node keeps it), one pass.
    con.execute(f"CREATE TABLE consenting AS {consenting()}")
    floor_answer, _, _ = timed(con, True)
    floor = [timed(con, True) for _ in range(reps)]
    # Threads add floats in varying order: the last digits may differ.
    same = floor_answer[1] == answer[1] and all(
        a == b if isinstance(a, int) else abs(a - b) <= 1e-12 * max(abs(b), 1.0)
        for a, b in zip(floor_answer[0], answer[0])
    )
    if not same:
        raise SystemExit(f"DuckDB's in-memory answer {floor_answer} differs from its answer over the files {answer}")

    moments, hist = answer
    json.dump(
        {
            "version": duckdb.__version__,
            "threads": int(con.execute("SELECT current_setting('threads')").fetchone()[0]),
            "age": {"n": moments[0], "sum": float(moments[1]), "mean": moments[2], "sd": moments[3], "bins": hist["age"]},
            "sbp": {"n": moments[4], "sum": float(moments[5]), "mean": moments[6], "sd": moments[7], "bins": hist["sbp"]},
            "first_s": first[0],
            "first_cpu_s": first[1],
            "runs_s": [r[1] for r in runs],
            "runs_cpu_s": [r[2] for r in runs],
            "peak_mib": files_peak,
            "floor_s": [r[1] for r in floor],
            "floor_cpu_s": [r[2] for r in floor],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
