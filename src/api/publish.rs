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

use super::{blocking, ApiError, Shared, Stopping};
use crate::app::Signet;
use crate::ca::ocsp::OcspOutcome;
use crate::ca::IssuerId;

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

/// Regenerates CRLs whose freshness is half spent, and all of them soon after a revocation.
/// A status change this process did not see (another process's, or one of a process killed
/// before its CRLs were made) is found by the store's status epoch within `CRL_CHECK_EVERY`.
/// On a stop, a pending change still gets its CRLs before the task ends.
pub(crate) async fn refresh_crls(state: Shared, mut stop: Stopping) {
    // How long the last regeneration after a revocation took: the next one waits at least as
    // long, so that a steady stream of revocations against a CRL of a million entries keeps
    // the CRL current without spending more than half a core on it.
    let mut last_build = Duration::ZERO;
    // The status epoch the CRLs were last made at by this process (none yet: unknown, so the
    // first check makes them all, in case a killed process left a change unlisted).
    let mut built_at: Option<u64> = None;
    // This process changed a status that is not on a CRL yet.
    let mut pending = false;
    let st = state.clone();
    // The status epoch when the task started: on a stop, a change since is listed.
    let at_start = blocking(move || Ok(st.signet.store.status_epoch().ok()))
        .await
        .ok()
        .flatten();
    loop {
        let notified = tokio::select! {
            biased;
            // Before the stop: a change notified just before it is listed by the last pass.
            _ = state.publish.crl_dirty.notified() => true,
            _ = stop.requested() => false,
            _ = tokio::time::sleep(CRL_CHECK_EVERY) => false,
        };
        if notified {
            pending = true;
            // Cut short by a stop: the change is then listed before the process ends.
            stop.pause(CRL_DEBOUNCE.max(last_build)).await;
        }
        let st = state.clone();
        let epoch = blocking(move || Ok(st.signet.store.status_epoch().ok()))
            .await
            .ok()
            .flatten();
        let stopping = stop.is_requested();
        let Some(dirty) = crl_pass(pending, at_start, built_at, epoch, stopping) else {
            return;
        };
        let started = std::time::Instant::now();
        let st = state.clone();
        let result = blocking(move || {
            let signet = &st.signet;
            let now = signet.clock.now();
            for (issuer, shard) in scopes(signet) {
                let latest = signet.store.latest_crl_info(issuer, shard).map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        e.to_string(),
                    )
                })?;
                let stale = match &latest {
                    None => true,
                    Some(c) => now >= c.this_update + (c.next_update - c.this_update) / 2,
                };
                if dirty || stale {
                    let crl =
                        signet
                            .authority
                            .generate_crl(issuer, shard, "service:crl-refresh")?;
                    st.publish.keep_crl(
                        (issuer, shard),
                        CachedCrl {
                            number: crl.number,
                            next_update: crl.next_update,
                            der: Bytes::from(crl.der),
                        },
                    );
                }
            }
            Ok(())
        })
        .await;
        if dirty {
            last_build = started.elapsed();
        }
        match result {
            // Changes after the epoch was read make a later one: they are looked at next time.
            Ok(()) if dirty => {
                built_at = epoch;
                pending = false;
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(code = e.code, error = %e.message, "CRL refresh failed; will retry")
            }
        }
        if stopping {
            return;
        }
    }
}

/// What a pass of the CRL refresher does: `Some(true)` makes every CRL, `Some(false)` only
/// those whose freshness is half spent, `None` ends the task (on a stop with nothing to list).
/// `pending`: this process changed a status since its last CRLs; `built_at`: the status epoch
/// of those CRLs (none: this process made none yet); `at_start`: the epoch when the task
/// started; `epoch`: the store's now (none when it could not be read).
fn crl_pass(
    pending: bool,
    at_start: Option<u64>,
    built_at: Option<u64>,
    epoch: Option<u64>,
    stopping: bool,
) -> Option<bool> {
    if stopping {
        // CRLs for changes known to be unlisted, not a fresh set at every stop.
        let changed = built_at.or(at_start).is_none_or(|k| epoch != Some(k));
        return (pending || changed).then_some(true);
    }
    Some(pending || epoch.is_none() || epoch != built_at)
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
    use super::crl_pass;

    const MAKE_ALL: Option<bool> = Some(true);
    const STALE_ONLY: Option<bool> = Some(false);
    const END: Option<bool> = None;

    #[test]
    fn a_status_change_of_this_process_makes_every_crl() {
        assert_eq!(crl_pass(true, Some(7), Some(7), Some(8), false), MAKE_ALL);
    }

    #[test]
    fn the_first_pass_of_a_process_makes_every_crl_in_case_a_killed_one_left_a_change_unlisted() {
        assert_eq!(crl_pass(false, Some(8), None, Some(8), false), MAKE_ALL);
    }

    #[test]
    fn a_change_made_by_another_process_makes_every_crl() {
        assert_eq!(crl_pass(false, Some(7), Some(7), Some(9), false), MAKE_ALL);
    }

    #[test]
    fn without_a_change_only_crls_half_way_to_their_next_update_are_made() {
        assert_eq!(
            crl_pass(false, Some(9), Some(9), Some(9), false),
            STALE_ONLY
        );
    }

    #[test]
    fn an_unreadable_status_epoch_counts_as_a_change() {
        assert_eq!(crl_pass(false, Some(9), Some(9), None, false), MAKE_ALL);
    }

    #[test]
    fn a_stop_lists_a_pending_change_first() {
        assert_eq!(crl_pass(true, Some(7), Some(7), Some(8), true), MAKE_ALL);
        assert_eq!(crl_pass(false, Some(7), Some(7), Some(8), true), MAKE_ALL);
    }

    #[test]
    fn a_stop_lists_a_change_made_since_the_start_by_a_process_that_made_no_crl_yet() {
        assert_eq!(crl_pass(false, Some(7), None, Some(8), true), MAKE_ALL);
    }

    #[test]
    fn a_stop_with_nothing_known_to_be_unlisted_makes_no_crl() {
        assert_eq!(crl_pass(false, Some(9), Some(9), Some(9), true), END);
        // A process that made no CRL yet does not make a fresh set at every stop.
        assert_eq!(crl_pass(false, Some(9), None, Some(9), true), END);
    }
}
