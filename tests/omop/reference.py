"""Reference figures on the Eunomia sample that load.py wrote, computed
directly on the union of the sites' rows with pandas, statsmodels and
lifelines, for the OMOP tests to compare the federated results with.

    python reference.py URL1 [URL2 ...]

reads the schemas ``cdm``, ``vocab`` and ``plexus`` of every database given
and prints one JSON object on stdout. The vocabulary tables are the same in
every database; their union is taken without duplicates.

Definitions
-----------
Day D is 2019-12-31 and the purpose is research (DUO code 'GRU').

consenting
    The persons of ``cdm.person`` with a ``plexus.consent`` row whose
    ``duo_codes`` is exactly 'GRU', ``valid_from <= D`` and (``withdrawn_at``
    is null or ``withdrawn_at > D``), and who are not in ``plexus.opt_out``.
    Every figure below is computed on consenting persons only.

age
    ``2019 - year_of_birth`` (an integer).

sex
    'F' when ``gender_concept_id`` = 8532, 'M' when 8507, else missing.
    ``sex_M`` is 1 for 'M' and 0 for 'F'.

descendants(c)
    The ``descendant_concept_id`` of the ``vocab.concept_ancestor`` rows with
    ``ancestor_concept_id`` = c, together with c itself. (Eunomia's
    concept_ancestor holds a self row, min_levels_of_separation 0, for each
    of the five concepts below, so adding c changes nothing here.)

concept-set booleans
    True when the person has at least one row of the table whose concept
    column is in the set, else false:

    - ``gi_bleed``: condition_occurrence.condition_concept_id in descendants(192671)
    - ``ibuprofen``: drug_exposure.drug_concept_id in descendants(1177480)
    - ``acetaminophen``: drug_exposure.drug_concept_id in descendants(1125315)
    - ``celecoxib``: drug_exposure.drug_concept_id in descendants(1118084)
    - ``diclofenac``: drug_exposure.drug_concept_id in descendants(1124300)
    - ``nsaid_no_celecoxib``: drug_exposure.drug_concept_id in
      (descendants(1177480) | descendants(1118084) | descendants(1124300))
      minus descendants(1118084)

Output
------
``consenting``
    The number of consenting persons.
``counts``
    For each boolean, the number of consenting persons for whom it is true.
``age``
    ``n``, ``sum``, ``sum_sq`` (sum of squares), ``mean`` and ``sd``
    (ddof 1) of age over consenting persons with a year of birth.
``sex_table``
    ``{"F": n, "M": n}``: consenting persons of each sex.
``logit``
    statsmodels GLM, binomial family, logit link (the same fit as
    ``Logit``), IRLS to a deviance change below 1e-13, of gi_bleed on an
    intercept, age, sex_M, ibuprofen and celecoxib (booleans as 0/1) over
    consenting persons with no missing value: ``names``, ``coef``, ``se``,
    ``deviance`` and ``n``. (Acetaminophen is left out: nearly everyone has
    it, and a node refuses a model whose sums would reveal the few who do
    not; so is diclofenac: in Eunomia every person has exactly one of
    celecoxib and diclofenac.)
``cox``
    lifelines ``CoxPHFitter`` (Efron ties, no penalty) over consenting
    persons with an index date inside an observation period and known
    age and sex:

    - the index drugs are descendants(1177480) | descendants(1118084) |
      descendants(1124300) | descendants(1125315) (ibuprofen, celecoxib,
      diclofenac, acetaminophen);
    - index date: the person's earliest drug_exposure_start_date of a
      drug_exposure row whose drug_concept_id is an index drug;
    - the index must fall in an observation period:
      observation_period_start_date <= index <= observation_period_end_date
      (Eunomia has one period per person); end = that period's
      observation_period_end_date (the latest one, should several hold it);
    - event = 1 when the person has a gi_bleed condition_start_date in
      (index, end], i.e. after the index date (not on it) and on or before
      end; time = days from index to the first such date;
    - otherwise event = 0 and time = days from index to end (censored;
      0 when the index is the period's last day);
    - covariates: age, sex_M and celecoxib (the boolean above, ever);
    - stratified by site (the i-th URL holds person_id % N == i), as a
      federated Cox model is: each node is its own stratum;
    - fitted to a change in log-likelihood below 1e-12 (lifelines'
      ``precision``).

    Output: ``names`` (age, sex_M, celecoxib), ``coef`` (log hazard
    ratios), ``se``, ``n``, ``events``, and ``followup``: over every
    consenting person with an index in an observation period, ``n``, the
    sum of ``time`` (``days``) and the number of events.
``sites``
    In URL order, ``{"consenting": n, "counts": {...}}`` computed on that
    database alone.

Floats are printed at full precision (Python's shortest round-trip repr).
"""

import datetime
import json
import sys

import numpy as np
import pandas as pd
import psycopg
import statsmodels.api as sm
from lifelines import CoxPHFitter

DAY = datetime.date(2019, 12, 31)
PURPOSE = "GRU"
AGE_YEAR = 2019
FEMALE, MALE = 8532, 8507

GI_BLEED = 192671
IBUPROFEN = 1177480
ACETAMINOPHEN = 1125315
CELECOXIB = 1118084
DICLOFENAC = 1124300

BOOLEANS = ["gi_bleed", "ibuprofen", "acetaminophen", "celecoxib", "diclofenac", "nsaid_no_celecoxib"]

QUERIES = {
    "person": "SELECT person_id, gender_concept_id, year_of_birth FROM cdm.person",
    "condition": "SELECT person_id, condition_concept_id AS concept_id, "
    "condition_start_date AS start_date FROM cdm.condition_occurrence",
    "drug": "SELECT person_id, drug_concept_id AS concept_id, "
    "drug_exposure_start_date AS start_date FROM cdm.drug_exposure",
    "period": "SELECT person_id, observation_period_start_date AS period_start, "
    "observation_period_end_date AS period_end FROM cdm.observation_period",
    "consent": "SELECT person_id, duo_codes, valid_from, withdrawn_at FROM plexus.consent",
    "opt_out": "SELECT person_id FROM plexus.opt_out",
    "ancestor": "SELECT ancestor_concept_id, descendant_concept_id FROM vocab.concept_ancestor",
}


def read(url):
    frames = {}
    with psycopg.connect(url) as conn:
        for name, sql in QUERIES.items():
            cur = conn.execute(sql)
            columns = [d.name for d in cur.description]
            frames[name] = pd.DataFrame(cur.fetchall(), columns=columns)
    for name, cols in (
        ("condition", ["start_date"]),
        ("drug", ["start_date"]),
        ("period", ["period_start", "period_end"]),
        ("consent", ["valid_from", "withdrawn_at"]),
    ):
        for c in cols:
            frames[name][c] = pd.to_datetime(frames[name][c])
    return frames


def union(sites):
    out = {name: pd.concat([s[name] for s in sites], ignore_index=True) for name in QUERIES}
    out["ancestor"] = out["ancestor"].drop_duplicates(ignore_index=True)
    return out


def descendants(ancestor, concept):
    rows = ancestor.loc[ancestor["ancestor_concept_id"] == concept, "descendant_concept_id"]
    return set(int(c) for c in rows) | {concept}


def concept_sets(ancestor):
    ibu = descendants(ancestor, IBUPROFEN)
    cel = descendants(ancestor, CELECOXIB)
    dic = descendants(ancestor, DICLOFENAC)
    return {
        "gi_bleed": ("condition", descendants(ancestor, GI_BLEED)),
        "ibuprofen": ("drug", ibu),
        "acetaminophen": ("drug", descendants(ancestor, ACETAMINOPHEN)),
        "celecoxib": ("drug", cel),
        "diclofenac": ("drug", dic),
        "nsaid_no_celecoxib": ("drug", (ibu | cel | dic) - cel),
    }


def consenting(d):
    day = pd.Timestamp(DAY)
    c = d["consent"]
    ok = (
        (c["duo_codes"] == PURPOSE)
        & (c["valid_from"] <= day)
        & (c["withdrawn_at"].isna() | (c["withdrawn_at"] > day))
    )
    ids = set(c.loc[ok, "person_id"]) - set(d["opt_out"]["person_id"])
    return d["person"][d["person"]["person_id"].isin(ids)].copy()


def persons(d):
    """The consenting persons with age, sex and the concept-set booleans."""
    p = consenting(d)
    p["age"] = (AGE_YEAR - p["year_of_birth"]).astype("Int64")
    p["sex"] = p["gender_concept_id"].map({FEMALE: "F", MALE: "M"})
    for var, (table, concepts) in concept_sets(d["ancestor"]).items():
        rows = d[table]
        having = set(rows.loc[rows["concept_id"].isin(concepts), "person_id"])
        p[var] = p["person_id"].isin(having)
    return p


def counts(p):
    return {var: int(p[var].sum()) for var in BOOLEANS}


def age_summary(p):
    a = p["age"].dropna().astype(float)
    return {
        "n": int(len(a)),
        "sum": float(a.sum()),
        "sum_sq": float((a * a).sum()),
        "mean": float(a.mean()),
        "sd": float(a.std(ddof=1)),
    }


def logit(p):
    x = p.dropna(subset=["age", "sex"])
    names = ["intercept", "age", "sex_M", "ibuprofen", "celecoxib"]
    design = np.column_stack(
        [
            np.ones(len(x)),
            x["age"].astype(float),
            (x["sex"] == "M").astype(float),
            x["ibuprofen"].astype(float),
            x["celecoxib"].astype(float),
        ]
    )
    fit = sm.GLM(x["gi_bleed"].astype(float).to_numpy(), design, family=sm.families.Binomial()).fit(
        tol=1e-13, maxiter=200
    )
    return {
        "names": names,
        "coef": [float(v) for v in fit.params],
        "se": [float(v) for v in fit.bse],
        "deviance": float(fit.deviance),
        "n": int(fit.nobs),
    }


def cox(d, p, sites):
    sets = concept_sets(d["ancestor"])
    index_drugs = sets["ibuprofen"][1] | sets["celecoxib"][1] | sets["diclofenac"][1] | sets["acetaminophen"][1]
    drug = d["drug"][d["drug"]["concept_id"].isin(index_drugs)]
    index = drug.groupby("person_id", as_index=False)["start_date"].min().rename(columns={"start_date": "index"})
    on_index = drug.merge(index, on="person_id")
    on_index = on_index[on_index["start_date"] == on_index["index"]]
    cel_index = set(on_index.loc[on_index["concept_id"].isin(sets["celecoxib"][1]), "person_id"])
    index["celecoxib_index"] = index["person_id"].isin(cel_index).astype(float)

    periods = d["period"].merge(index, on="person_id")
    periods = periods[(periods["period_start"] <= periods["index"]) & (periods["index"] <= periods["period_end"])]
    periods = periods.groupby("person_id", as_index=False).agg(
        index=("index", "first"), end=("period_end", "max"), celecoxib_index=("celecoxib_index", "first")
    )

    cond = d["condition"][d["condition"]["concept_id"].isin(sets["gi_bleed"][1])]
    after = cond.merge(periods[["person_id", "index", "end"]], on="person_id")
    after = after[(after["start_date"] > after["index"]) & (after["start_date"] <= after["end"])]
    first = after.groupby("person_id", as_index=False)["start_date"].min().rename(columns={"start_date": "event_date"})

    c = periods.merge(first, on="person_id", how="left")
    c["event"] = c["event_date"].notna().astype(int)
    c["time"] = (c["event_date"].fillna(c["end"]) - c["index"]).dt.days.astype(float)

    followed = p[["person_id"]].merge(c, on="person_id")
    x = p.dropna(subset=["age", "sex"])[["person_id", "age", "sex", "celecoxib"]].merge(c, on="person_id")
    data = pd.DataFrame(
        {
            "time": x["time"],
            "event": x["event"],
            "age": x["age"].astype(float),
            "sex_M": (x["sex"] == "M").astype(float),
            "celecoxib": x["celecoxib"].astype(float),
            "site": (x["person_id"] % sites).astype(int),
        }
    )
    fit = CoxPHFitter().fit(
        data, duration_col="time", event_col="event", strata=["site"], fit_options={"precision": 1e-12}
    )
    names = ["age", "sex_M", "celecoxib"]
    return {
        "names": names,
        "coef": [float(fit.params_[n]) for n in names],
        "se": [float(fit.standard_errors_[n]) for n in names],
        "n": int(len(data)),
        "events": int(data["event"].sum()),
        "followup": {
            "n": int(len(followed)),
            "days": float(followed["time"].sum()),
            "events": int(followed["event"].sum()),
        },
        "windows": windows(d, p, index, cond),
    }


def windows(d, p, index, cond):
    """Over consenting persons with an index (their first index-drug
    exposure, whatever the observation period): ``bleed_within_year``, the
    number with a gi_bleed condition_start_date from index + 1 to index +
    365 days; ``observed_before_index``, ``n`` and ``sum`` of index minus
    the start of their first observation period (in days)."""
    x = p[["person_id"]].merge(index[["person_id", "index"]], on="person_id")
    c = cond.merge(x, on="person_id")
    days = (c["start_date"] - c["index"]).dt.days
    within = set(c.loc[(days >= 1) & (days <= 365), "person_id"])
    start = d["period"].groupby("person_id", as_index=False)["period_start"].min()
    o = x.merge(start, on="person_id")
    before = (o["index"] - o["period_start"]).dt.days
    return {
        "bleed_within_year": len(within),
        "observed_before_index": {"n": int(len(o)), "sum": float(before.sum())},
    }


def main(urls):
    if not urls:
        print("usage: python reference.py URL1 [URL2 ...]", file=sys.stderr)
        sys.exit(2)
    sites = [read(url) for url in urls]
    d = union(sites)
    p = persons(d)
    sex = p["sex"].value_counts()
    # Warnings (a convergence problem, say) go to stderr, never into the JSON.
    out = {
        "consenting": int(len(p)),
        "counts": counts(p),
        "age": age_summary(p),
        "sex_table": {s: int(sex.get(s, 0)) for s in ("F", "M")},
        "logit": logit(p),
        "cox": cox(d, p, len(urls)),
        "sites": [],
    }
    for site in sites:
        site = dict(site, ancestor=d["ancestor"])
        ps = persons(site)
        out["sites"].append({"consenting": int(len(ps)), "counts": counts(ps)})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
