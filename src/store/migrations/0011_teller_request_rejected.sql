-- Signet store, version 11: a teller request can be rejected, with the reason: by a
-- teller-admin of its bank (its filer withdrawing it, or the second person declining it), or
-- by Signet when approving it could only fail (the teller already has a key in the HSM).
-- SQLite cannot change a CHECK constraint: the table is made again and its rows copied (no
-- table refers to it).
CREATE TABLE teller_requests_v11 (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id),
    requested_by         TEXT NOT NULL,           -- credential id
    csr                  BLOB NOT NULL,
    subject              TEXT NOT NULL,
    status               TEXT NOT NULL
                         CHECK (status IN ('pending', 'approved', 'expired', 'rejected')),
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    decided_by           TEXT,
    decided_at           INTEGER,
    serial               TEXT,
    kind                 TEXT NOT NULL DEFAULT 'certificate'
                         CHECK (kind IN ('certificate', 'hsm-key')),
    teller_id            TEXT REFERENCES tellers(id),
    requested_by_holder  TEXT,
    decision_reason      TEXT
);
INSERT INTO teller_requests_v11 (id, tenant_id, requested_by, csr, subject, status, created_at,
        expires_at, decided_by, decided_at, serial, kind, teller_id, requested_by_holder)
    SELECT id, tenant_id, requested_by, csr, subject, status, created_at, expires_at, decided_by,
        decided_at, serial, kind, teller_id, requested_by_holder
    FROM teller_requests ORDER BY rowid;  -- rowid: the order they were filed in
DROP TABLE teller_requests;
ALTER TABLE teller_requests_v11 RENAME TO teller_requests;
-- A bank's requests, newest first (GET /v1/teller-requests); rowid orders those of one second.
CREATE INDEX teller_requests_by_tenant ON teller_requests (tenant_id, created_at);
