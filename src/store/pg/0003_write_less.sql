-- Signet store on PostgreSQL, version 3 (SQLite 0005): fewer index entries written per
-- certificate. certificates_subject_serial served no query (the one lookup by ID number also
-- names the tenant: certificates_owner_subject). A thumbprint exists once a certificate is
-- signed: pending and void rows are left out of its index.
-- Migrations run in one transaction: the index build holds an exclusive lock on certificates
-- until it commits (seconds per million rows), so other processes' reads of certificates wait.
-- Upgrade a large live database in a quiet moment.
DROP INDEX certificates_subject_serial;
DROP INDEX certificates_thumbprint;
CREATE INDEX certificates_thumbprint ON certificates(thumbprint) WHERE thumbprint IS NOT NULL;
