-- Prediction models registered with a study: the spec (name, format, how
-- the inputs read the dictionary) as JSON, the file, and the hash each
-- hospital approves (over both). Registering a name again replaces the
-- model; the audit log keeps every hash registered.
CREATE TABLE models (
    study_id TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    spec TEXT NOT NULL,
    file BYTEA NOT NULL,
    registered_by TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (study_id, name)
);
