-- Signet store on PostgreSQL, version 1: the same tables as SQLite migrations 0001-0003
-- (BIGINT for SQLite INTEGER, BYTEA for BLOB). Applied once, in one transaction, under the
-- store's write lock; signet_schema records the version.

CREATE TABLE ca (
    name        TEXT COLLATE "C" PRIMARY KEY,
    key_label   TEXT NOT NULL UNIQUE,
    cert_der    BYTEA,
    public_key  BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE certificates (
    serial          TEXT COLLATE "C" PRIMARY KEY,
    issuer          TEXT NOT NULL,
    profile         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'issued', 'void')),
    subject         TEXT NOT NULL,
    subject_serial_digest TEXT,
    shard           BIGINT NOT NULL,
    not_before      BIGINT NOT NULL,
    not_after       BIGINT NOT NULL,
    tbs_der         BYTEA NOT NULL,
    cert_der        BYTEA,
    created_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    revocation_reason BIGINT,
    invalidity_date BIGINT,
    owner           TEXT,
    key_id          TEXT,
    thumbprint      TEXT
);
CREATE INDEX certificates_key_id ON certificates(key_id);
CREATE INDEX certificates_thumbprint ON certificates(thumbprint);
CREATE INDEX certificates_owner_subject ON certificates(owner, subject_serial_digest);
CREATE INDEX certificates_pending ON certificates(status, created_at) WHERE status = 'pending';
CREATE INDEX certificates_revoked ON certificates(issuer, shard) WHERE revoked_at IS NOT NULL;
CREATE INDEX certificates_subject_serial ON certificates(subject_serial_digest);

CREATE TABLE crls (
    issuer      TEXT NOT NULL,
    shard       BIGINT NOT NULL,
    number      BIGINT NOT NULL,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    tbs_der     BYTEA NOT NULL,
    crl_der     BYTEA,
    PRIMARY KEY (issuer, shard, number)
);

CREATE TABLE audit_events (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    object    TEXT NOT NULL,
    details   TEXT NOT NULL,
    tenant    TEXT,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL
);
CREATE INDEX audit_events_action ON audit_events(action, seq);
CREATE INDEX audit_events_tenant ON audit_events(tenant, seq);

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    hash      BYTEA NOT NULL,
    at        BIGINT NOT NULL,
    signature BYTEA NOT NULL
);

CREATE TABLE tenants (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE tellers (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    employee_id  TEXT NOT NULL,
    name         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (tenant_id, employee_id)
);

CREATE TABLE credentials (
    id          TEXT COLLATE "C" PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    role        TEXT NOT NULL,
    token_hash  BYTEA NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT,
    teller_id   TEXT REFERENCES tellers(id)
);

CREATE TABLE teller_requests (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    requested_by  TEXT NOT NULL,
    csr           BYTEA NOT NULL,
    subject       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'expired')),
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    decided_by    TEXT,
    decided_at    BIGINT,
    serial        TEXT,
    kind          TEXT NOT NULL DEFAULT 'certificate' CHECK (kind IN ('certificate', 'hsm-key')),
    teller_id     TEXT REFERENCES tellers(id)
);

CREATE TABLE replay_instructions (
    signer      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    first_seen  BIGINT NOT NULL,
    PRIMARY KEY (signer, digest)
);
CREATE TABLE replay_instruction_ids (
    signer          TEXT NOT NULL,
    instruction_id  TEXT NOT NULL,
    first_seen      BIGINT NOT NULL,
    PRIMARY KEY (signer, instruction_id)
);

CREATE TABLE signing_keys (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id),
    kind                TEXT NOT NULL CHECK (kind IN ('seal', 'teller')),
    teller_id           TEXT REFERENCES tellers(id),
    key_label           TEXT NOT NULL UNIQUE,
    certificate_serial  TEXT NOT NULL,
    pin_hash            TEXT,
    activation_hash     TEXT,
    failed_attempts     BIGINT NOT NULL DEFAULT 0,
    locked              BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    CHECK ((kind = 'seal' AND teller_id IS NULL) OR (kind = 'teller' AND teller_id IS NOT NULL))
);
CREATE UNIQUE INDEX signing_keys_one_seal ON signing_keys(tenant_id) WHERE kind = 'seal';
CREATE UNIQUE INDEX signing_keys_one_per_teller ON signing_keys(teller_id) WHERE kind = 'teller';
