-- Signet store, version 9: the person a credential was given to. The two-person rule for
-- teller certificates compares people: two credentials of one holder cannot approve each
-- other's requests. NULL for credentials made before, or without a holder.
ALTER TABLE credentials ADD COLUMN holder TEXT;
