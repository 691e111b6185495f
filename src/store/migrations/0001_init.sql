-- Signet store, version 1. Applied once, in one transaction; PRAGMA user_version records it.

-- The CA hierarchy: one row per CA (root, customer, teller) and service key (audit).
CREATE TABLE ca (
    name        TEXT PRIMARY KEY,          -- root | customer | teller | audit
    key_label   TEXT NOT NULL UNIQUE,      -- label of the key pair in the token
    cert_der    BLOB,                      -- NULL for keys without a certificate (audit)
    public_key  BLOB NOT NULL,             -- SubjectPublicKeyInfo DER
    created_at  INTEGER NOT NULL
);

-- Every certificate, from the moment its to-be-signed bytes exist (invariant 2).
CREATE TABLE certificates (
    serial          TEXT PRIMARY KEY,      -- lowercase hex; unique across all issuers (invariant 4)
    issuer          TEXT NOT NULL,
    profile         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'issued', 'void')),
    subject         TEXT NOT NULL,         -- RFC 4514
    subject_serial_digest TEXT,            -- hex SHA-256 of the subject's serialNumber (lookup without clear ID in queries)
    shard           INTEGER NOT NULL,
    not_before      INTEGER NOT NULL,
    not_after       INTEGER NOT NULL,
    tbs_der         BLOB NOT NULL,
    cert_der        BLOB,
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER,
    revocation_reason INTEGER,             -- RFC 5280 CRLReason code; NULL = unspecified (no reasonCode)
    invalidity_date INTEGER,
    owner           TEXT,                  -- the tenant that requested it (NULL: the CA operator)
    key_id          TEXT,                  -- hex subjectKeyIdentifier (as written in the certificate)
    thumbprint      TEXT                   -- hex SHA-256 of the certificate DER, once signed
);
CREATE INDEX certificates_key_id ON certificates(key_id);
CREATE INDEX certificates_thumbprint ON certificates(thumbprint);
CREATE INDEX certificates_owner_subject ON certificates(owner, subject_serial_digest);
CREATE INDEX certificates_pending ON certificates(status, created_at) WHERE status = 'pending';
CREATE INDEX certificates_revoked ON certificates(issuer, shard) WHERE revoked_at IS NOT NULL;
CREATE INDEX certificates_subject_serial ON certificates(subject_serial_digest);

-- CRL numbers per issuer and shard, monotonic (RFC 5280 5.2.3); and the CRLs themselves.
CREATE TABLE crls (
    issuer      TEXT NOT NULL,
    shard       INTEGER NOT NULL,          -- -1 for a CRL that covers the whole issuer (the root's ARL)
    number      INTEGER NOT NULL,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    tbs_der     BLOB NOT NULL,
    crl_der     BLOB,
    PRIMARY KEY (issuer, shard, number)
);

-- The audit chain: each event carries the SHA-256 of the previous one (invariant 3).
CREATE TABLE audit_events (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    object    TEXT NOT NULL,
    details   TEXT NOT NULL,
    tenant    TEXT,                        -- the bank the event concerns (NULL: CA-wide)
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);

-- Signed checkpoints of the chain head (also appended to a file outside the database).
CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      BLOB NOT NULL,
    at        INTEGER NOT NULL,
    signature BLOB NOT NULL
);

-- Banks served by this CA, and their API credentials (tokens are stored hashed only).
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,      -- the bank's registered name: the O of its certificates
    created_at  INTEGER NOT NULL
);

CREATE TABLE credentials (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    role        TEXT NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,      -- SHA-256 of the bearer token
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

-- Teller certificate requests awaiting a second teller-admin (two-person rule).
CREATE TABLE teller_requests (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    requested_by  TEXT NOT NULL,           -- credential id
    csr           BLOB NOT NULL,
    subject       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'expired')),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    decided_by    TEXT,
    decided_at    INTEGER,
    serial        TEXT
);

-- Replay guard: a signer (SHA-256 of its SubjectPublicKeyInfo) presenting the same instruction
-- (SHA-256) or the same instruction id again. Primary keys make it hold across processes.
CREATE TABLE replay_instructions (
    signer      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    PRIMARY KEY (signer, digest)
);
CREATE TABLE replay_instruction_ids (
    signer          TEXT NOT NULL,
    instruction_id  TEXT NOT NULL,
    first_seen      INTEGER NOT NULL,
    PRIMARY KEY (signer, instruction_id)
);
