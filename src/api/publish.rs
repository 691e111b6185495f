//! What relying parties fetch without credentials: the CA certificates, CRLs (regenerated in
//! the background, never inside a revocation request) and OCSP answers (RFC 6960; requests
//! without a nonce are answered from pre-signed responses, RFC 5019).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::sync::Notify;

use super::{blocking, ApiError, AppState, Shared, Stopping};
use crate::app::Signet;
use crate::ca::ocsp::OcspOutcome;
use crate::ca::IssuerId;
use crate::store::{CrlNumbered, CrlRecord, Succeeds};

/// How often the background task looks at CRL freshness.
const CRL_CHECK_EVERY: Duration = Duration::from_secs(30);
/// Wait after a revocation before regenerating, so that a burst makes one CRL.
const CRL_DEBOUNCE: Duration = Duration::from_millis(500);
/// Longest a pre-signed OCSP response is served before it is signed again.
const OCSP_CACHE_SECS: i64 = 60;
/// Most pre-signed OCSP responses kept.
const OCSP_CACHE_ENTRIES: usize = 10_000;
/// Largest OCSP request accepted.
const MAX_OCSP_REQUEST: usize = 8 * 1024;

/// Pre-signed OCSP responses by request DER: (response DER, served until, status epoch).
type PreSigned = HashMap<Vec<u8>, (Vec<u8>, i64, u64)>;

/// The newest CRL of a scope held in memory: a CRL of a million entries is tens of
/// megabytes, read from the store once and then shared by every request that fetches it.
#[derive(Clone)]
struct CachedCrl {
    number: u64,
    next_update: i64,
    der: Bytes,
}

/// State of publication: pre-signed OCSP responses, served CRLs and the CRL refresh trigger.
pub struct Publisher {
    ocsp_cache: Mutex<PreSigned>,
    crl_cache: Mutex<HashMap<(IssuerId, Option<u32>), CachedCrl>>,
    crl_dirty: Notify,
}

impl Publisher {
    pub fn new(_signet: &Signet) -> Self {
        Publisher {
            ocsp_cache: Mutex::new(HashMap::new()),
            crl_cache: Mutex::new(HashMap::new()),
            crl_dirty: Notify::new(),
        }
    }

    /// A certificate's status changed: drop pre-signed OCSP answers, have CRLs regenerated soon.
    pub fn status_changed(&self) {
        self.ocsp_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.crl_dirty.notify_one();
    }

    fn cached_crl(&self, scope: (IssuerId, Option<u32>)) -> Option<CachedCrl> {
        self.crl_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&scope)
            .cloned()
    }

    /// Keeps `crl` as the scope's served CRL unless a newer one is held already.
    fn keep_crl(&self, scope: (IssuerId, Option<u32>), crl: CachedCrl) {
        let mut cache = self.crl_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.get(&scope).is_none_or(|c| c.number < crl.number) {
            cache.insert(scope, crl);
        }
    }
}

/// The CRL scopes this CA publishes: the root's ARL, and each issuing CA (per shard).
fn scopes(signet: &Signet) -> Vec<(IssuerId, Option<u32>)> {
    let shards = signet.config.ca.crl_shards;
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

/// Makes a scope's CRL when it misses a status change or its freshness is half spent: at the
/// start (a change left unlisted by a process that was killed, or made by the CLI while no
/// server ran, is listed at once), soon after this process changes a status, every
/// `CRL_CHECK_EVERY` (a change by another process), and on a stop (a change still unlisted).
/// Whether a CRL misses a change is the store's to say ([`crl_due`]), so that of several
/// processes sharing a store only the first to look makes the CRL for a change.
pub(crate) async fn refresh_crls(state: Shared, mut stop: Stopping) {
    // How long the last pass that made CRLs took: a pass after a notification waits at least
    // as long, so that a steady stream of revocations against a CRL of a million entries
    // keeps the CRL current without spending more than half a core on it.
    let mut last_build = Duration::ZERO;
    // The first pass runs at once.
    let mut notified = false;
    loop {
        if notified {
            // Cut short by a stop: the change is then listed before the process ends.
            stop.pause(CRL_DEBOUNCE.max(last_build)).await;
        }
        let stopping = stop.is_requested();
        let started = std::time::Instant::now();
        let st = state.clone();
        let result = blocking(move || {
            let mut made = 0;
            // A scope that fails (its CA key gone from the token, say) does not keep the
            // others from their CRLs.
            for (issuer, shard) in scopes(&st.signet) {
                match refresh_scope(&st, issuer, shard, stopping) {
                    Ok(true) => made += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        %issuer, ?shard, code = e.code, error = %e.message,
                        "CRL refresh failed; will retry"
                    ),
                }
            }
            Ok(made)
        })
        .await;
        match result {
            Ok(0) => {}
            Ok(_) => last_build = started.elapsed(),
            Err(e) => {
                tracing::warn!(code = e.code, error = %e.message, "CRL refresh failed; will retry")
            }
        }
        if stopping {
            return;
        }
        notified = tokio::select! {
            biased;
            // Before the stop: a change notified just before it is listed by the last pass.
            _ = state.publish.crl_dirty.notified() => true,
            _ = stop.requested() => false,
            _ = tokio::time::sleep(CRL_CHECK_EVERY) => false,
        };
    }
}

/// Makes the CRL of one scope if it is due; whether it made one. Judged again when another
/// process made the CRL judged due meanwhile: its CRL may already be current (then this one
/// stands back), or may have been made before a change this process sees.
fn refresh_scope(
    st: &AppState,
    issuer: IssuerId,
    shard: Option<u32>,
    stopping: bool,
) -> Result<bool, ApiError> {
    let signet = &st.signet;
    let unavailable = |e: crate::store::StoreError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    };
    for _ in 0..CRL_RACE_RETRIES {
        let now = signet.clock.now();
        let epoch = signet
            .store
            .crl_scope_epoch(issuer, shard)
            .map_err(unavailable)?;
        let latest = signet
            .store
            .latest_crl_info(issuer, shard)
            .map_err(unavailable)?;
        if !crl_due(latest.as_ref(), epoch, now, stopping) {
            return Ok(false);
        }
        let newest = signet
            .store
            .newest_crl_number(issuer, shard)
            .map_err(unavailable)?;
        let Some(succeeds) = succession(newest, now, stopping) else {
            tracing::debug!(%issuer, ?shard, "another process is making this CRL");
            return Ok(false);
        };
        let Some(crl) = signet.authority.generate_crl_succeeding(
            issuer,
            shard,
            "service:crl-refresh",
            succeeds,
        )?
        else {
            tracing::debug!(%issuer, ?shard, "another process made this CRL first");
            continue;
        };
        st.publish.keep_crl(
            (issuer, shard),
            CachedCrl {
                number: crl.number,
                next_update: crl.next_update,
                der: Bytes::from(crl.der),
            },
        );
        return Ok(true);
    }
    Ok(false)
}

/// How many times one pass judges a scope whose CRL other processes keep making first.
const CRL_RACE_RETRIES: usize = 3;

/// How long after its thisUpdate a CRL that took a number but has no signed DER is taken for
/// abandoned (its maker failed to sign or store it, or died): longer than building a CRL of
/// a million entries, an HSM call's deadline and storing the result take together.
const UNSIGNED_CRL_ABANDONED_AFTER_SECS: i64 = 120;

/// What the next CRL of a scope found due must succeed, given the newest CRL the scope has
/// taken a number for: that one (so that of two processes judging at once only one makes it),
/// or nothing (`None`) while another maker is still signing it. On a stop, whatever is newest:
/// the last pass must list this process's own changes before it ends.
fn succession(newest: Option<CrlNumbered>, now: i64, stopping: bool) -> Option<Succeeds> {
    if stopping {
        return Some(Succeeds::Newest);
    }
    match newest {
        Some(n) if !n.signed && now < n.this_update + UNSIGNED_CRL_ABANDONED_AFTER_SECS => None,
        n => Some(Succeeds::Only(n.map(|n| n.number))),
    }
}

/// Whether a scope needs a new CRL, given its newest (`latest`), the scope's status epoch
/// now ([`crate::store::Store::crl_scope_epoch`]) and the time: when it has none, when it may
/// miss a status change (it was made at another epoch: an older one, or a newer one than a
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

pub async fn ca_chain(State(state): State<Shared>) -> Result<Response, ApiError> {
    let mut pem = String::new();
    for id in IssuerId::ALL {
        pem.push_str(&state.signet.authority.ca(id)?.pem());
    }
    Ok((
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        pem,
    )
        .into_response())
}

pub async fn ca_certificate(
    State(state): State<Shared>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let id = file
        .strip_suffix(".der")
        .and_then(IssuerId::parse)
        .ok_or_else(|| ApiError::not_found(format!("no CA certificate {file:?}")))?;
    let der = state.signet.authority.ca(id)?.der.clone();
    Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response())
}

/// `GET /crl/{issuer}.crl` or `/crl/{issuer}-{shard}.crl`: the newest CRL, made now if none is
/// fresh (the served CRL is never past its nextUpdate).
pub async fn crl(
    State(state): State<Shared>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("no CRL {file:?}"));
    let stem = file.strip_suffix(".crl").ok_or_else(not_found)?;
    let (name, shard) = match stem.rsplit_once('-') {
        Some((n, s)) if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => {
            (n, Some(s.parse::<u32>().map_err(|_| not_found())?))
        }
        _ => (stem, None),
    };
    let issuer = IssuerId::parse(name).ok_or_else(not_found)?;
    if !scopes(&state.signet).contains(&(issuer, shard)) {
        return Err(not_found());
    }
    let der = blocking(move || {
        let signet = &state.signet;
        let now = signet.clock.now();
        let scope = (issuer, shard);
        let unavailable = |e: crate::store::StoreError| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            )
        };
        // The newest CRL any process made; its DER is read from the store only when this
        // process does not hold that one already.
        if let Some(info) = signet
            .store
            .latest_crl_info(issuer, shard)
            .map_err(unavailable)?
        {
            if now < info.next_update {
                if let Some(c) = state.publish.cached_crl(scope) {
                    if c.number >= info.number && now < c.next_update {
                        return Ok(c.der);
                    }
                }
                if let Some(c) = signet
                    .store
                    .latest_crl(issuer, shard)
                    .map_err(unavailable)?
                {
                    if let Some(der) = c.crl_der.filter(|_| now < c.next_update) {
                        let der = Bytes::from(der);
                        state.publish.keep_crl(
                            scope,
                            CachedCrl {
                                number: c.number,
                                next_update: c.next_update,
                                der: der.clone(),
                            },
                        );
                        return Ok(der);
                    }
                }
            }
        }
        let crl = signet
            .authority
            .generate_crl(issuer, shard, "service:crl-serve")?;
        let der = Bytes::from(crl.der);
        state.publish.keep_crl(
            scope,
            CachedCrl {
                number: crl.number,
                next_update: crl.next_update,
                der: der.clone(),
            },
        );
        Ok(der)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response())
}

fn ocsp_response(der: Vec<u8>, max_age: Option<i64>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/ocsp-response".parse().expect("static header"),
    );
    if let Some(age) = max_age {
        if let Ok(v) = format!("max-age={age}, public, no-transform, must-revalidate").parse() {
            headers.insert(header::CACHE_CONTROL, v);
        }
    }
    (StatusCode::OK, headers, der).into_response()
}

async fn answer_ocsp(state: Shared, request: Vec<u8>) -> Response {
    let now = state.signet.clock.now();
    // Any process's revocation shows in the store's status epoch: a pre-signed answer from an
    // older epoch is never served.
    let st = state.clone();
    let epoch = tokio::task::spawn_blocking(move || st.signet.store.status_epoch().ok())
        .await
        .ok()
        .flatten();
    if let Some(epoch) = epoch {
        if let Some((der, until, at_epoch)) = state
            .publish
            .ocsp_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&request)
            .cloned()
        {
            if now < until && at_epoch == epoch {
                return ocsp_response(der, Some(until - now));
            }
        }
    }
    let st = state.clone();
    let req = request.clone();
    let answer = tokio::task::spawn_blocking(move || st.signet.authority.ocsp_respond(&req)).await;
    let Ok(answer) = answer else {
        return ocsp_response(
            crate::ca::ocsp::failure_response(OcspOutcome::InternalError),
            None,
        );
    };
    if let (OcspOutcome::Successful, false, Some(epoch)) = (answer.status, answer.has_nonce, epoch)
    {
        let until = now
            + OCSP_CACHE_SECS.min(
                answer
                    .next_update
                    .map_or(OCSP_CACHE_SECS, |n| (n - now) / 2),
            );
        let mut cache = state
            .publish
            .ocsp_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Bounded: requests for random serials must not grow it without end.
        if cache.len() >= OCSP_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(request, (answer.der.clone(), until, epoch));
        return ocsp_response(answer.der, Some(until - now));
    }
    ocsp_response(answer.der, None)
}

/// `POST /ocsp` with a DER OCSPRequest body.
pub async fn ocsp_post(State(state): State<Shared>, body: Bytes) -> Response {
    if body.len() > MAX_OCSP_REQUEST {
        return ocsp_response(
            crate::ca::ocsp::failure_response(OcspOutcome::MalformedRequest),
            None,
        );
    }
    answer_ocsp(state, body.to_vec()).await
}

/// `GET /ocsp/{base64 of the DER request}` (RFC 6960 appendix A.1; the base64 may hold `/`).
pub async fn ocsp_get(State(state): State<Shared>, Path(encoded): Path<String>) -> Response {
    let cleaned: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let decoded = if cleaned.len() > MAX_OCSP_REQUEST * 2 {
        None
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(cleaned.as_bytes())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(cleaned.as_bytes()))
            .ok()
    };
    match decoded {
        Some(req) => answer_ocsp(state, req).await,
        None => ocsp_response(
            crate::ca::ocsp::failure_response(OcspOutcome::MalformedRequest),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{crl_due, succession, CrlNumbered, Succeeds, UNSIGNED_CRL_ABANDONED_AFTER_SECS};
    use crate::ca::IssuerId;
    use crate::store::CrlRecord;

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
        assert_eq!(succession(None, 1_000, false), Some(Succeeds::Only(None)));
        assert_eq!(
            succession(Some(numbered(4, 900, true)), 1_000, false),
            Some(Succeeds::Only(Some(4)))
        );
    }

    #[test]
    fn a_crl_another_maker_is_signing_is_waited_for_and_one_it_abandoned_is_succeeded() {
        let signing = numbered(5, 1_000, false);
        assert_eq!(succession(Some(signing), 1_010, false), None);
        let abandoned = 1_000 + UNSIGNED_CRL_ABANDONED_AFTER_SECS;
        assert_eq!(
            succession(Some(signing), abandoned, false),
            Some(Succeeds::Only(Some(5)))
        );
    }

    #[test]
    fn the_last_pass_before_a_stop_follows_whatever_is_newest() {
        assert_eq!(
            succession(Some(numbered(5, 1_000, false)), 1_010, true),
            Some(Succeeds::Newest)
        );
    }
}
