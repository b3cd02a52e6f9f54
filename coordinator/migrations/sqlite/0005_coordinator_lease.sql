-- The lease table of active/standby coordinators (see
-- ../postgres/0005_coordinator_lease.sql). A SQLite file has one
-- coordinator, which never takes a lease; the table keeps the two schemas
-- alike.
CREATE TABLE coordinator_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL
);
