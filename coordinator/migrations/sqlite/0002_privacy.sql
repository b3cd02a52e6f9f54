-- Privacy accounting at the coordinator. The nodes' own ledgers are what
-- is enforced; these tables let the coordinator refuse a doomed query
-- early and show researchers what their study has spent.

-- One row per query that spent budget: the most any node charged for it.
CREATE TABLE privacy_charges (
    query_id TEXT PRIMARY KEY REFERENCES queries(id),
    study_id TEXT NOT NULL,
    canonical_hash TEXT NOT NULL,
    rho REAL NOT NULL,
    at_unix_ms INTEGER NOT NULL
);
CREATE INDEX privacy_charges_study ON privacy_charges (study_id, canonical_hash);

-- What each node last reported from its own ledger.
CREATE TABLE node_budgets (
    study_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    spent_rho REAL NOT NULL,
    budget_rho REAL NOT NULL,
    updated_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (study_id, node_id)
);
