-- Signet store, version 10: the holder of the credential that filed a teller request, as it
-- was when the request was filed. The two-person rule compares it with the approver's holder;
-- a caller authenticated by a TLS client certificate has its holder from `[[tls.client]]`,
-- which the store does not keep. NULL for requests filed before, or without a holder.
ALTER TABLE teller_requests ADD COLUMN requested_by_holder TEXT;
