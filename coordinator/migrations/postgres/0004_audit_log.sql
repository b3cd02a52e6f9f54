-- The audit log as a Merkle log (see ../sqlite/0004_audit_log.sql).
ALTER TABLE audit_events ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN nodes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE audit_events ADD COLUMN result_size BIGINT;
ALTER TABLE audit_events ADD COLUMN suppressed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_events ADD COLUMN privacy_cost DOUBLE PRECISION;
ALTER TABLE audit_events ADD COLUMN privacy_remaining DOUBLE PRECISION;

CREATE INDEX audit_who ON audit_events(who);
CREATE INDEX audit_job ON audit_events(job_id);

CREATE TABLE audit_checkpoints (
    id BIGSERIAL PRIMARY KEY,
    origin TEXT NOT NULL,
    size BIGINT NOT NULL,
    root TEXT NOT NULL,
    at BIGINT NOT NULL,
    signature TEXT NOT NULL
);
