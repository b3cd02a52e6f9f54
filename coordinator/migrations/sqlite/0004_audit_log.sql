-- The audit log becomes a Merkle log (RFC 6962 shape): each entry's leaf is
-- the SHA-256 of its canonical bytes, entries are numbered from 1 without
-- gaps (seq is assigned by the coordinator, not by AUTOINCREMENT), and signed
-- checkpoints (size, root, time) are kept here for auditors.
ALTER TABLE audit_events ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN nodes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE audit_events ADD COLUMN result_size BIGINT;
ALTER TABLE audit_events ADD COLUMN suppressed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_events ADD COLUMN privacy_cost REAL;
ALTER TABLE audit_events ADD COLUMN privacy_remaining REAL;

CREATE INDEX audit_who ON audit_events(who);
CREATE INDEX audit_job ON audit_events(job_id);

CREATE TABLE audit_checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    size BIGINT NOT NULL,
    root TEXT NOT NULL,
    at BIGINT NOT NULL,
    signature TEXT NOT NULL
);
