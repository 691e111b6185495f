-- Signet store, version 3: find the newest status change quickly (pre-signed OCSP answers are
-- dropped when any process revokes, holds or releases a certificate).
CREATE INDEX audit_events_action ON audit_events(action, seq);
