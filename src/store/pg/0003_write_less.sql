-- Signet store on PostgreSQL, version 3 (SQLite 0005): fewer index entries written per
-- certificate. certificates_subject_serial served no query (the one lookup by ID number also
-- names the tenant: certificates_owner_subject). A thumbprint exists once a certificate is
-- signed: pending and void rows are left out of its index.
DROP INDEX certificates_subject_serial;
DROP INDEX certificates_thumbprint;
CREATE INDEX certificates_thumbprint ON certificates(thumbprint) WHERE thumbprint IS NOT NULL;
