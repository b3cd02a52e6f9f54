-- Privacy accounting at the coordinator (see ../sqlite/0002_privacy.sql).

CREATE TABLE privacy_charges (
    query_id TEXT PRIMARY KEY REFERENCES queries(id),
    study_id TEXT NOT NULL,
    canonical_hash TEXT NOT NULL,
    rho DOUBLE PRECISION NOT NULL,
    at_unix_ms BIGINT NOT NULL
);
CREATE INDEX privacy_charges_study ON privacy_charges (study_id, canonical_hash);

CREATE TABLE node_budgets (
    study_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    spent_rho DOUBLE PRECISION NOT NULL,
    budget_rho DOUBLE PRECISION NOT NULL,
    updated_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (study_id, node_id)
);
