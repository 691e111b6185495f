//! When a CRL scope needs a new CRL, and which CRL that one must succeed, so that of several
//! processes sharing a store only one makes the CRL for a change. The schedule (when to look)
//! is the caller's; the judgement is the store's data and this module's rule.

use super::crl::SignedCrl;
use super::{Authority, CaError, IssuerId};
use crate::store::{CrlNumbered, CrlRecord, Succeeds};

/// A CRL scope: an issuer, and its shard when its CRL is split (the root's ARL never is).
pub type CrlScope = (IssuerId, Option<u32>);

/// How many times one refresh judges a scope whose CRL other processes keep making first.
const CRL_RACE_RETRIES: usize = 3;

/// How long after its thisUpdate a CRL that took a number but has no signed DER is taken for
/// abandoned (its maker failed to sign or store it, or died): longer than building a CRL of
/// a million entries, an HSM call's deadline and storing the result take together.
const UNSIGNED_CRL_ABANDONED_AFTER_SECS: i64 = 120;

/// What a refresh of a scope came to.
#[derive(Debug)]
pub enum CrlRefresh {
    /// The scope's newest CRL lists every change and has freshness to spare (on a stop: lists
    /// every change).
    Current,
    /// Another process is signing the scope's next CRL.
    AnotherMaker,
    /// Other processes made the scope's CRL first, every time it was judged.
    Outpaced,
    /// This process made the scope's next CRL.
    Made(SignedCrl),
}

impl Authority {
    /// The CRL scopes this CA publishes: the root's ARL, and each issuing CA (per shard).
    pub fn crl_scopes(&self) -> Vec<CrlScope> {
        let shards = self.settings.crl_shards;
        let mut out = vec![(IssuerId::Root, None)];
        for issuer in [IssuerId::Customer, IssuerId::Teller] {
            if shards > 1 {
                out.extend((0..shards).map(|s| (issuer, Some(s))));
            } else {
                out.push((issuer, None));
            }
        }
        out
    }

    /// What to warn of when the store holds CRLs of scopes the configured shard count does not
    /// make. A certificate names its CRL in its distribution point when it is issued: with
    /// fewer shards, those of the shards gone are on no CRL; from one to several, the CRL of
    /// the whole issuer is no longer made. Warned of, not refused: a store whose count changed
    /// before Signet looked holds both kinds, and no count would open it.
    pub(crate) fn crl_shards_warning(&self) -> Result<Option<String>, CaError> {
        let configured = self.settings.crl_shards;
        let scopes = self.crl_scopes();
        let recorded = self.store.crl_scopes_recorded()?;
        let Some(&(issuer, shard)) = recorded.iter().find(|&&(issuer, shard)| {
            issuer != IssuerId::Root && !scopes.contains(&(issuer, shard))
        }) else {
            return Ok(None);
        };
        // What the count was: one CRL of the whole issuer, or at least its highest shard's.
        let was = match recorded
            .iter()
            .filter(|(i, _)| *i == issuer)
            .filter_map(|(_, s)| *s)
            .max()
        {
            Some(highest) if shard.is_some() => (highest + 1).to_string(),
            _ => "1".to_string(),
        };
        let recorded = match shard {
            Some(s) => format!("of shard {s}"),
            None => "of all its certificates".to_string(),
        };
        Ok(Some(format!(
            "[ca].crl_shards is {configured}, but the store holds the {issuer} CA's CRL {recorded}: \
             the certificates issued under that count name a CRL Signet no longer makes, so their \
             revocations reach no CRL there (OCSP still answers for them); set crl_shards back to \
             {was} unless every such certificate has expired"
        )))
    }

    /// Makes the scope's next CRL if it is due ([`crl_due`]), as the successor of the newest
    /// one ([`succession`]). Judged again when another process made the CRL judged due
    /// meanwhile: its CRL may already be current (then this one stands back), or may have been
    /// made before a change this process sees. `stopping`: the last refresh before the
    /// process ends, which lists its own changes whatever another maker is doing.
    pub fn refresh_crl(
        &self,
        (issuer, shard): CrlScope,
        stopping: bool,
        actor: &str,
    ) -> Result<CrlRefresh, CaError> {
        for _ in 0..CRL_RACE_RETRIES {
            let now = self.clock.now();
            let epoch = self.store.crl_scope_epoch(issuer, shard)?;
            let latest = self.store.latest_crl_info(issuer, shard)?;
            if !crl_due(latest.as_ref(), epoch, now, stopping) {
                return Ok(CrlRefresh::Current);
            }
            let newest = self.store.newest_crl_number(issuer, shard)?;
            // Succeeded at once only while the HSM answers: during an outage, each attempt
            // would record one more unsigned CRL (its whole TBS) to no end.
            let left_here = newest.is_some_and(|n| {
                !n.signed
                    && self
                        .crls_left_unsigned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&((issuer, shard), n.number))
            }) && self.hsm.is_available();
            let Some(succeeds) = succession(newest, now, stopping, left_here) else {
                return Ok(CrlRefresh::AnotherMaker);
            };
            if let Some(crl) = self.generate_crl_succeeding(issuer, shard, actor, succeeds)? {
                return Ok(CrlRefresh::Made(crl));
            }
        }
        Ok(CrlRefresh::Outpaced)
    }

    /// Makes the scope's next CRL now, as the successor of the newest one (signed or not),
    /// whatever another process making it is doing: for a caller that must have a CRL and has
    /// waited for that maker long enough. `None` (nothing recorded or signed) when the newest
    /// is being signed in this process (it will be stored soon), or when another process
    /// recorded one since the newest was read.
    pub fn succeed_newest_crl(
        &self,
        (issuer, shard): CrlScope,
        actor: &str,
    ) -> Result<Option<SignedCrl>, CaError> {
        let newest = self.store.newest_crl_number(issuer, shard)?;
        if let Some(n) = newest.filter(|n| !n.signed) {
            let in_flight = self
                .crls_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if in_flight.contains(&((issuer, shard), n.number)) {
                return Ok(None);
            }
        }
        let succeeds = Succeeds::Only(newest.map(|n| n.number));
        self.generate_crl_succeeding(issuer, shard, actor, succeeds)
    }
}

/// What the next CRL of a scope found due must succeed, given the newest CRL the scope has
/// taken a number for: that one (so that of two processes judging at once only one makes it),
/// or nothing (`None`) while another maker is still signing it. An unsigned CRL this process
/// left (`left_here`: it failed to sign or store it) is succeeded at once. On a stop, whatever is
/// newest: the last refresh must list this process's own changes before it ends.
fn succession(
    newest: Option<CrlNumbered>,
    now: i64,
    stopping: bool,
    left_here: bool,
) -> Option<Succeeds> {
    if stopping {
        return Some(Succeeds::Newest);
    }
    match newest {
        Some(n)
            if !n.signed
                && !left_here
                && now < n.this_update + UNSIGNED_CRL_ABANDONED_AFTER_SECS =>
        {
            None
        }
        n => Some(Succeeds::Only(n.map(|n| n.number))),
    }
}

/// Whether a scope needs a new CRL, given its newest signed one (`latest`), the scope's status
/// epoch now ([`crate::store::Store::crl_scope_epoch`]) and the time: when it has none, when it
/// may miss a status change (it was made at another epoch: an older one, or a newer one than a
/// store restored from a backup has; or before CRLs recorded theirs), or, but on a stop, when
/// half its freshness is spent.
fn crl_due(latest: Option<&CrlRecord>, epoch: u64, now: i64, stopping: bool) -> bool {
    let Some(c) = latest else {
        return true;
    };
    let misses_a_change = c.status_epoch != Some(epoch);
    let half_spent = now >= c.this_update + (c.next_update - c.this_update) / 2;
    misses_a_change || (half_spent && !stopping)
}

#[cfg(test)]
mod tests {
    use super::{crl_due, succession, UNSIGNED_CRL_ABANDONED_AFTER_SECS};
    use crate::ca::IssuerId;
    use crate::store::{CrlNumbered, CrlRecord, Succeeds};

    /// A CRL made at 1000, fresh until 2000, listing the changes up to `epoch`.
    fn crl(epoch: Option<u64>) -> CrlRecord {
        CrlRecord {
            issuer: IssuerId::Customer,
            shard: None,
            number: 3,
            this_update: 1_000,
            next_update: 2_000,
            status_epoch: epoch,
            crl_der: None,
        }
    }

    #[test]
    fn a_scope_without_a_crl_gets_one() {
        assert!(crl_due(None, 0, 1_000, false));
        assert!(crl_due(None, 0, 1_000, true));
    }

    #[test]
    fn a_crl_that_lists_every_change_is_not_made_again_by_any_process() {
        assert!(!crl_due(Some(&crl(Some(9))), 9, 1_100, false));
        assert!(!crl_due(Some(&crl(Some(9))), 9, 1_100, true));
    }

    #[test]
    fn a_crl_made_before_a_status_change_is_made_again() {
        assert!(crl_due(Some(&crl(Some(8))), 9, 1_100, false));
    }

    #[test]
    fn a_crl_made_at_an_epoch_the_store_no_longer_has_is_made_again() {
        // The store was restored from a backup older than the CRL.
        assert!(crl_due(Some(&crl(Some(9))), 8, 1_100, false));
    }

    #[test]
    fn a_crl_made_before_crls_recorded_their_epoch_is_made_again_once() {
        assert!(crl_due(Some(&crl(None)), 0, 1_100, false));
    }

    #[test]
    fn a_crl_half_way_to_its_next_update_is_made_again() {
        assert!(!crl_due(Some(&crl(Some(9))), 9, 1_499, false));
        assert!(crl_due(Some(&crl(Some(9))), 9, 1_500, false));
    }

    #[test]
    fn a_stop_lists_a_change_but_does_not_refresh_a_crl_for_its_age() {
        assert!(crl_due(Some(&crl(Some(8))), 9, 1_100, true));
        assert!(!crl_due(Some(&crl(Some(9))), 9, 1_900, true));
    }

    fn numbered(number: u64, this_update: i64, signed: bool) -> CrlNumbered {
        CrlNumbered {
            number,
            this_update,
            signed,
        }
    }

    #[test]
    fn the_next_crl_succeeds_the_newest_one_numbered_signed_or_not() {
        assert_eq!(
            succession(None, 1_000, false, false),
            Some(Succeeds::Only(None))
        );
        assert_eq!(
            succession(Some(numbered(4, 900, true)), 1_000, false, false),
            Some(Succeeds::Only(Some(4)))
        );
    }

    #[test]
    fn a_crl_another_maker_is_signing_is_waited_for_and_one_it_abandoned_is_succeeded() {
        let signing = numbered(5, 1_000, false);
        assert_eq!(succession(Some(signing), 1_010, false, false), None);
        let abandoned = 1_000 + UNSIGNED_CRL_ABANDONED_AFTER_SECS;
        assert_eq!(
            succession(Some(signing), abandoned, false, false),
            Some(Succeeds::Only(Some(5)))
        );
    }

    #[test]
    fn a_crl_this_process_failed_to_sign_is_succeeded_at_once() {
        assert_eq!(
            succession(Some(numbered(5, 1_000, false)), 1_010, false, true),
            Some(Succeeds::Only(Some(5)))
        );
    }

    #[test]
    fn the_last_pass_before_a_stop_follows_whatever_is_newest() {
        assert_eq!(
            succession(Some(numbered(5, 1_000, false)), 1_010, true, false),
            Some(Succeeds::Newest)
        );
    }
}
