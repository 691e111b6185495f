-- Signet store on PostgreSQL, version 8 (SQLite 0010): the holder of the credential that filed
-- a teller request, for the two-person rule. NULL for requests filed before, or without one.
ALTER TABLE teller_requests ADD COLUMN requested_by_holder TEXT;
