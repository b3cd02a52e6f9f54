-- Prediction models registered with a study (see
-- ../postgres/0006_models.sql).
CREATE TABLE models (
    study_id TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    spec TEXT NOT NULL,
    file BLOB NOT NULL,
    registered_by TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (study_id, name)
);
