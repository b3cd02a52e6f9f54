-- Each node's signed statement about a job, its signature and certificate.
ALTER TABLE jobs ADD COLUMN statement BYTEA;
ALTER TABLE jobs ADD COLUMN signature BYTEA;
ALTER TABLE jobs ADD COLUMN node_certificate BYTEA;
