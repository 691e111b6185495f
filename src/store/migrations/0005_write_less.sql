-- Signet store, version 5: fewer pages written per certificate and per verification (each
-- page a commit dirties is a 4 KiB WAL frame, checksummed and fsynced).
-- certificates_subject_serial served no query: the one lookup by ID number also names the
-- tenant, and certificates_owner_subject serves it.
DROP INDEX certificates_subject_serial;
-- A thumbprint exists once a certificate is signed: pending and void rows are left out, so that
-- recording a certificate no longer inserts a NULL entry that its completion then deletes.
DROP INDEX certificates_thumbprint;
CREATE INDEX certificates_thumbprint ON certificates(thumbprint) WHERE thumbprint IS NOT NULL;
-- The replay guard's keys in one B-tree each (clustered on the key), not a rowid table and
-- an index of the same key.
CREATE TABLE replay_instructions_v5 (
    signer      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    PRIMARY KEY (signer, digest)
) WITHOUT ROWID;
INSERT INTO replay_instructions_v5 SELECT signer, digest, first_seen FROM replay_instructions;
DROP TABLE replay_instructions;
ALTER TABLE replay_instructions_v5 RENAME TO replay_instructions;
CREATE TABLE replay_instruction_ids_v5 (
    signer          TEXT NOT NULL,
    instruction_id  TEXT NOT NULL,
    first_seen      INTEGER NOT NULL,
    PRIMARY KEY (signer, instruction_id)
) WITHOUT ROWID;
INSERT INTO replay_instruction_ids_v5
    SELECT signer, instruction_id, first_seen FROM replay_instruction_ids;
DROP TABLE replay_instruction_ids;
ALTER TABLE replay_instruction_ids_v5 RENAME TO replay_instruction_ids;
