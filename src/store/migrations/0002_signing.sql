-- Signet store, version 2: the signing service (bank e-seals and tellers' HSM-held keys).

-- A bank's tellers as identities: credentials rotate, the key stays the teller's.
CREATE TABLE tellers (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    employee_id  TEXT NOT NULL,
    name         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (tenant_id, employee_id)
);

-- A `teller` credential speaks for exactly one teller.
ALTER TABLE credentials ADD COLUMN teller_id TEXT REFERENCES tellers(id);

-- Teller requests are for a certificate from a CSR, or for a key made in the HSM.
ALTER TABLE teller_requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'certificate'
    CHECK (kind IN ('certificate', 'hsm-key'));
ALTER TABLE teller_requests ADD COLUMN teller_id TEXT REFERENCES tellers(id);

-- Keys held in the HSM for one owner each: the bank's e-seal, or one teller.
CREATE TABLE signing_keys (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id),
    kind                TEXT NOT NULL CHECK (kind IN ('seal', 'teller')),
    teller_id           TEXT REFERENCES tellers(id),
    key_label           TEXT NOT NULL UNIQUE,
    certificate_serial  TEXT NOT NULL,
    pin_hash            TEXT,              -- PBKDF2-HMAC-SHA256 of the key's PIN (teller keys)
    activation_hash     TEXT,              -- SHA-256 of the one-time activation code, until used
    failed_attempts     INTEGER NOT NULL DEFAULT 0,
    locked              INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    CHECK ((kind = 'seal' AND teller_id IS NULL) OR (kind = 'teller' AND teller_id IS NOT NULL))
);
CREATE UNIQUE INDEX signing_keys_one_seal ON signing_keys(tenant_id) WHERE kind = 'seal';
CREATE UNIQUE INDEX signing_keys_one_per_teller ON signing_keys(teller_id) WHERE kind = 'teller';
