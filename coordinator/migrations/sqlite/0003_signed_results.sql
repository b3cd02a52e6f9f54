-- Each node signs what it answers (a ResultStatement) with its TLS key; the
-- coordinator keeps the statement, the signature and the certificate it was
-- checked against, so a third party can check them later.
ALTER TABLE jobs ADD COLUMN statement BLOB;
ALTER TABLE jobs ADD COLUMN signature BLOB;
ALTER TABLE jobs ADD COLUMN node_certificate BLOB;
