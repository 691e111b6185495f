-- Signet store on PostgreSQL, version 9 (SQLite 0011): a teller request can be rejected, with
-- the reason (by a teller-admin of its bank, or by Signet when approving it could only fail).
ALTER TABLE teller_requests DROP CONSTRAINT teller_requests_status_check;
ALTER TABLE teller_requests ADD CONSTRAINT teller_requests_status_check
    CHECK (status IN ('pending', 'approved', 'expired', 'rejected'));
ALTER TABLE teller_requests ADD COLUMN decision_reason TEXT;
-- The order requests were filed in, which orders those of one second (SQLite has its rowid).
-- Requests filed before this version are numbered in no particular order.
ALTER TABLE teller_requests ADD COLUMN filed_order BIGSERIAL;
-- A bank's requests, newest first (GET /v1/teller-requests).
CREATE INDEX teller_requests_by_tenant ON teller_requests (tenant_id, created_at);
