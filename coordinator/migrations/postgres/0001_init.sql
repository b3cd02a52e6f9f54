-- Coordinator state (PostgreSQL). The SQLite variant is ../sqlite; the two
-- folders hold the same versions and names (a unit test checks) and keep
-- the same tables and columns, in each database's own types.

CREATE TABLE studies (
    id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    definition_hash TEXT NOT NULL,
    registered_by TEXT NOT NULL,
    registered_at BIGINT NOT NULL
);

CREATE TABLE queries (
    id TEXT PRIMARY KEY,
    study_id TEXT NOT NULL REFERENCES studies(id),
    researcher TEXT NOT NULL,
    query TEXT NOT NULL,
    query_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error_code TEXT,
    error_message TEXT,
    submitted_at BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE INDEX queries_study ON queries(study_id);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries(id),
    node_id TEXT NOT NULL,
    status TEXT NOT NULL,
    stats TEXT,
    error_code TEXT,
    error_message TEXT,
    sent_at BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE INDEX jobs_query ON jobs(query_id);

-- seq is assigned by the coordinator (the entry's position in the Merkle
-- tree), never by a sequence: a sequence leaves gaps on rollback.
CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    study_id TEXT NOT NULL DEFAULT '',
    query_id TEXT NOT NULL DEFAULT '',
    job_id TEXT NOT NULL DEFAULT '',
    node_id TEXT NOT NULL DEFAULT '',
    query_hash TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);

CREATE INDEX audit_study ON audit_events(study_id);
