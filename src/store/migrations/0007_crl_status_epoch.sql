-- Signet store, version 7: each CRL records the status epoch its entries were read at (the
-- newest status-change audit event then), so that a serving process can tell that another
-- process's CRL already lists every change, and need not make one more. NULL for CRLs made
-- before: they are taken as listing nothing newer, and made again once.
ALTER TABLE crls ADD COLUMN status_epoch INTEGER;
