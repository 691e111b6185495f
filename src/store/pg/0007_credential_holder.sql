-- Signet store on PostgreSQL, version 7 (SQLite 0009): the person a credential was given to,
-- for the two-person rule. NULL for credentials made before, or without a holder.
ALTER TABLE credentials ADD COLUMN holder TEXT;
