-- Signet store on PostgreSQL, version 5 (SQLite 0007): each CRL records the status epoch its
-- entries were read at, so that a serving process can tell that another process's CRL already
-- lists every change. NULL for CRLs made before: made again once.
ALTER TABLE crls ADD COLUMN status_epoch BIGINT;
