-- Signet store, version 8: the status epoch of each issuer and shard. A status change
-- (revocation, hold, release, void) records the seq of its audit event under its certificate's
-- issuer and shard, so that a change is made known to the CRLs of its own scope only: a teller
-- revocation no longer remakes the customer CA's CRLs, nor the root's ARL.
CREATE TABLE crl_scope_epochs (
    issuer  TEXT NOT NULL,
    shard   INTEGER NOT NULL,   -- the certificate's shard
    epoch   INTEGER NOT NULL,   -- seq of the newest status-change event of this issuer and shard
    PRIMARY KEY (issuer, shard)
);
-- Until now CRLs recorded the whole store's epoch. Each scope that lists something starts at
-- it: a CRL made at it is current, one made before is made again. A scope that lists nothing
-- starts at 0, which only a CRL made before any status change recorded (it lists nothing too).
INSERT INTO crl_scope_epochs (issuer, shard, epoch)
SELECT DISTINCT c.issuer, c.shard, e.epoch
FROM certificates c,
     (SELECT MAX(seq) AS epoch FROM audit_events WHERE action IN
        ('certificate.revoke', 'certificate.hold', 'certificate.release', 'certificate.void')) e
WHERE c.revoked_at IS NOT NULL AND e.epoch IS NOT NULL;
