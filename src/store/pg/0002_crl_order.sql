-- Signet store on PostgreSQL, version 2 (SQLite 0004): CRLs of a million entries read in CRL order straight from an index
-- (no sort of the revoked rows, no table lookups): one covering index for an issuer's whole
-- CRL and one per shard. Partial: only revoked, held or void rows are in them.
CREATE INDEX certificates_crl_order ON certificates(issuer, revoked_at, serial, revocation_reason, invalidity_date)
    WHERE revoked_at IS NOT NULL;
CREATE INDEX certificates_crl_shard_order ON certificates(issuer, shard, revoked_at, serial, revocation_reason, invalidity_date)
    WHERE revoked_at IS NOT NULL;
