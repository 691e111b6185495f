//! What relying parties fetch without credentials: the CA certificates, CRLs (regenerated in
//! the background, never inside a revocation request) and OCSP answers (RFC 6960; requests
//! without a nonce are answered from pre-signed responses, RFC 5019).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use headers::HeaderMapExt;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{blocking, ApiError, AppState, Shared, Stopping};
use crate::app::Signet;
use crate::ca::ocsp::OcspOutcome;
use crate::ca::{CaError, CrlRefresh, CrlScope, IssuerId, SignedCrl};

/// How often the background task looks at CRL freshness.
const CRL_CHECK_EVERY: Duration = Duration::from_secs(30);
/// Wait after a revocation before regenerating, so that a burst makes one CRL.
const CRL_DEBOUNCE: Duration = Duration::from_millis(500);
/// Longest a request for a CRL waits for one another process is making before it makes one.
const CRL_SERVE_WAIT: Duration = Duration::from_secs(5);
/// How often a request waiting for another process's CRL looks for it.
const CRL_SERVE_POLL: Duration = Duration::from_millis(100);
/// When a request for a CRL that could neither be served nor made gets 503 `crl_unavailable`.
const CRL_SERVE_GIVE_UP: Duration = Duration::from_secs(15);
/// Who makes a CRL for a request that found none servable (in the audit log).
const CRL_SERVE_ACTOR: &str = "service:crl-serve";
/// Longest a pre-signed OCSP response is served before it is signed again.
const OCSP_CACHE_SECS: i64 = 60;
/// Most pre-signed OCSP responses kept.
const OCSP_CACHE_ENTRIES: usize = 10_000;
/// Largest OCSP request accepted.
const MAX_OCSP_REQUEST: usize = 8 * 1024;

/// Pre-signed OCSP responses by request DER.
type PreSigned = HashMap<Vec<u8>, PreSignedAnswer>;

/// A pre-signed OCSP response and how long it is served.
#[derive(Clone)]
struct PreSignedAnswer {
    /// Shared by every answer that serves it (no copy per hit).
    der: Bytes,
    /// Served until then (Unix seconds), and only while the store's status epoch is `epoch`.
    until: i64,
    epoch: u64,
    caching: Caching,
}

/// The RFC 5019 (section 6.2) caching headers of an OCSP response that do not change while it
/// is served, made once when it is signed.
#[derive(Clone)]
struct Caching {
    /// Its thisUpdate, as an HTTP date.
    last_modified: HeaderValue,
    /// When Signet stops serving it, as an HTTP date.
    expires: HeaderValue,
    /// Its SHA-256, quoted.
    etag: HeaderValue,
}

impl Caching {
    fn of(der: &[u8], this_update: i64, served_until: i64) -> Caching {
        let value = |s: String| HeaderValue::from_str(&s).expect("an HTTP date or hex is a value");
        Caching {
            last_modified: value(http_date(this_update)),
            expires: value(http_date(served_until)),
            etag: value(format!("\"{}\"", hex::encode(Sha256::digest(der)))),
        }
    }
}

fn http_date(unix: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64))
}

/// The newest CRL of a scope held in memory: a CRL of a million entries is tens of
/// megabytes, read from the store once and then shared by every request that fetches it.
#[derive(Clone)]
struct CachedCrl {
    number: u64,
    next_update: i64,
    der: Bytes,
}

impl From<SignedCrl> for CachedCrl {
    fn from(crl: SignedCrl) -> Self {
        CachedCrl {
            number: crl.number,
            next_update: crl.next_update,
            der: Bytes::from(crl.der),
        }
    }
}

/// State of publication: pre-signed OCSP responses, served CRLs and the CRL refresh trigger.
pub struct Publisher {
    ocsp_cache: Mutex<PreSigned>,
    crl_cache: Mutex<HashMap<CrlScope, CachedCrl>>,
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

    fn cached_crl(&self, scope: CrlScope) -> Option<CachedCrl> {
        self.crl_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&scope)
            .cloned()
    }

    /// Keeps `crl` as the scope's served CRL unless a newer one is held already; `crl` again
    /// (its DER is shared, not copied).
    fn keep_crl(&self, scope: CrlScope, crl: CachedCrl) -> CachedCrl {
        let mut cache = self.crl_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.get(&scope).is_none_or(|c| c.number < crl.number) {
            cache.insert(scope, crl.clone());
        }
        crl
    }
}

/// Makes a scope's CRL when it misses a status change or its freshness is half spent: at the
/// start (a change left unlisted by a process that was killed, or made by the CLI while no
/// server ran, is listed at once), soon after this process changes a status, every
/// `CRL_CHECK_EVERY` (a change by another process), and on a stop (a change still unlisted).
/// Whether a scope is due, and which CRL its next succeeds, is the CA's to judge from the store
/// ([`crate::ca::Authority::refresh_crl`]), so that of several processes sharing a store only
/// the first to look makes the CRL for a change.
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
            for scope in st.signet.authority.crl_scopes() {
                let (issuer, shard) = scope;
                match st
                    .signet
                    .authority
                    .refresh_crl(scope, stopping, "service:crl-refresh")
                {
                    Ok(CrlRefresh::Made(crl)) => {
                        st.publish.keep_crl(scope, crl.into());
                        made += 1;
                    }
                    Ok(CrlRefresh::Current) => {}
                    Ok(CrlRefresh::AnotherMaker) => {
                        tracing::debug!(%issuer, ?shard, "another process is making this CRL")
                    }
                    Ok(CrlRefresh::Outpaced) => {
                        tracing::debug!(%issuer, ?shard, "other processes made this CRL first")
                    }
                    Err(e) => {
                        // Through ApiError, which logs HSM, store and CA failures as errors.
                        let e = ApiError::from(e);
                        tracing::warn!(
                            %issuer, ?shard, code = e.code, error = %e.message,
                            "CRL refresh failed; will retry"
                        )
                    }
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

/// The newest CRL any process made for `scope`, if it is within its nextUpdate; its DER is
/// read from the store only when this process does not hold that one already.
fn servable_crl(state: &AppState, scope: CrlScope) -> Result<Option<CachedCrl>, ApiError> {
    let (issuer, shard) = scope;
    let store = &state.signet.store;
    let now = state.signet.clock.now();
    let unavailable = |e: crate::store::StoreError| ApiError::from(CaError::Store(e));
    let Some(info) = store.latest_crl_info(issuer, shard).map_err(unavailable)? else {
        return Ok(None);
    };
    if now >= info.next_update {
        return Ok(None);
    }
    if let Some(c) = state.publish.cached_crl(scope) {
        if c.number >= info.number && now < c.next_update {
            return Ok(Some(c));
        }
    }
    let Some(c) = store.latest_crl(issuer, shard).map_err(unavailable)? else {
        return Ok(None);
    };
    Ok(c.crl_der.filter(|_| now < c.next_update).map(|der| {
        state.publish.keep_crl(
            scope,
            CachedCrl {
                number: c.number,
                next_update: c.next_update,
                der: Bytes::from(der),
            },
        )
    }))
}

/// The scope's servable CRL, or the one this request makes when the scope is due and no other
/// process is making it; `None` while another is. Once the request has `waited_enough`, it
/// makes one whatever the other maker does, so that a served CRL is never past its nextUpdate,
/// unless this process is signing one (then it waits on for that one). The requests that wait
/// together then make one: each succeeds the newest CRL it sees, and those the store refuses
/// serve the winner's at their next look.
fn serve_or_make_crl(
    state: &AppState,
    scope: CrlScope,
    waited_enough: bool,
) -> Result<Option<CachedCrl>, ApiError> {
    if let Some(crl) = servable_crl(state, scope)? {
        return Ok(Some(crl));
    }
    let authority = &state.signet.authority;
    let made = match authority.refresh_crl(scope, false, CRL_SERVE_ACTOR)? {
        CrlRefresh::Made(crl) => Some(crl),
        _ if waited_enough => authority.succeed_newest_crl(scope, CRL_SERVE_ACTOR)?,
        _ => None,
    };
    Ok(made.map(|crl| state.publish.keep_crl(scope, crl.into())))
}

/// `GET /crl/{issuer}.crl` or `/crl/{issuer}-{shard}.crl`: the newest CRL, made now if none is
/// within its nextUpdate; while another process is making it, that one, after a wait of at
/// most [`CRL_SERVE_WAIT`] (the served CRL is never past its nextUpdate).
pub async fn crl(
    State(state): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
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
    if !state
        .signet
        .authority
        .crl_scopes()
        .contains(&(issuer, shard))
    {
        return Err(not_found());
    }
    // Another process may be signing the scope's next CRL: the request waits for it a while
    // (off the blocking pool, which this route must not fill) rather than make a second one.
    let scope = (issuer, shard);
    let asked = Instant::now();
    let crl = loop {
        let st = state.clone();
        let waited_enough = asked.elapsed() >= CRL_SERVE_WAIT;
        if let Some(crl) = blocking(move || serve_or_make_crl(&st, scope, waited_enough)).await? {
            break crl;
        }
        if asked.elapsed() >= CRL_SERVE_GIVE_UP {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "crl_unavailable",
                "no CRL of this scope can be served or made now; retry shortly",
            ));
        }
        tokio::time::sleep(CRL_SERVE_POLL).await;
    };
    // A scope's CRL number names its bytes (every process serves the DER stored for it), and
    // with its nextUpdate it still does when a store restored from a backup gives a number
    // out again: a strong validator. A relying party or a cache that holds this CRL gets 304 and no
    // body (tens of megabytes for a large CRL). `no-cache`: a cache asks each time, since a
    // revocation makes a new CRL long before this one's nextUpdate.
    let etag = crl_etag(scope, crl.number, crl.next_update);
    let fresh_copy_held = if_none_match_holds(&headers, &etag);
    let validators = [
        (header::ETAG, etag),
        (
            header::CACHE_CONTROL,
            "public, no-cache, no-transform".into(),
        ),
    ];
    if fresh_copy_held {
        return Ok((StatusCode::NOT_MODIFIED, validators).into_response());
    }
    Ok((
        validators,
        [(header::CONTENT_TYPE, "application/pkix-crl")],
        crl.der,
    )
        .into_response())
}

/// The entity tag of a scope's CRL: its issuer, shard, number and nextUpdate.
fn crl_etag((issuer, shard): CrlScope, number: u64, next_update: i64) -> String {
    match shard {
        Some(s) => format!("\"{issuer}-{s}-{number}-{next_update}\""),
        None => format!("\"{issuer}-{number}-{next_update}\""),
    }
}

/// Whether the request's If-None-Match names `etag` (or is `*`), by RFC 9110's weak
/// comparison (the `headers` crate parses the field; a malformed one names nothing).
fn if_none_match_holds(request: &HeaderMap, etag: &str) -> bool {
    let (Some(asked), Ok(etag)) = (
        request.typed_get::<headers::IfNoneMatch>(),
        etag.parse::<headers::ETag>(),
    ) else {
        return false;
    };
    !asked.precondition_passes(&etag)
}

/// An OCSP response; a pre-signed one (`cached`: its caching and the seconds it is still
/// served) with the headers RFC 5019 section 6.2 asks of it, so that an HTTP cache in front of
/// the responder keeps it as long as Signet serves it (Expires is that moment too, not the
/// response's nextUpdate). Any other answer (a nonce's, a failure) is not to be stored.
fn ocsp_response(der: impl Into<Bytes>, cached: Option<(&Caching, i64)>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/ocsp-response".parse().expect("static header"),
    );
    match cached {
        Some((caching, age)) => {
            let cache_control = format!("max-age={age}, public, no-transform, must-revalidate");
            if let Ok(v) = HeaderValue::from_str(&cache_control) {
                headers.insert(header::CACHE_CONTROL, v);
            }
            headers.insert(header::EXPIRES, caching.expires.clone());
            headers.insert(header::LAST_MODIFIED, caching.last_modified.clone());
            headers.insert(header::ETAG, caching.etag.clone());
        }
        None => {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }
    let body: Bytes = der.into();
    (StatusCode::OK, headers, body).into_response()
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
        if let Some(PreSignedAnswer {
            der,
            until,
            epoch: at_epoch,
            caching,
        }) = state
            .publish
            .ocsp_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&request)
            .cloned()
        {
            if now < until && at_epoch == epoch {
                return ocsp_response(der, Some((&caching, until - now)));
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
    if let (OcspOutcome::Successful, false, Some(epoch), Some(this_update)) =
        (answer.status, answer.has_nonce, epoch, answer.this_update)
    {
        let until = now
            + OCSP_CACHE_SECS.min(
                answer
                    .next_update
                    .map_or(OCSP_CACHE_SECS, |n| (n - now) / 2),
            );
        let caching = Caching::of(&answer.der, this_update, until);
        let der = Bytes::from(answer.der);
        let mut cache = state
            .publish
            .ocsp_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Bounded: requests for random serials must not grow it without end.
        if cache.len() >= OCSP_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(
            request,
            PreSignedAnswer {
                der: der.clone(),
                until,
                epoch,
                caching: caching.clone(),
            },
        );
        return ocsp_response(der, Some((&caching, until - now)));
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
    use super::{crl_etag, if_none_match_holds};
    use crate::ca::IssuerId;
    use axum::http::{header, HeaderMap, HeaderValue};

    #[test]
    fn a_crl_s_tag_names_its_scope_number_and_next_update() {
        assert_eq!(
            crl_etag((IssuerId::Customer, None), 7, 1_800_000_000),
            "\"customer-7-1800000000\""
        );
        assert_eq!(
            crl_etag((IssuerId::Teller, Some(3)), 7, 1_800_000_000),
            "\"teller-3-7-1800000000\""
        );
    }

    fn asking(fields: &[&[u8]]) -> HeaderMap {
        let mut request = HeaderMap::new();
        for field in fields {
            request.append(
                header::IF_NONE_MATCH,
                HeaderValue::from_bytes(field).unwrap(),
            );
        }
        request
    }

    #[test]
    fn if_none_match_holds_for_the_tag_in_a_list_weakly_or_for_any() {
        let tag = "\"customer-7\"";
        for field in [
            &b"\"customer-7\""[..],
            b"\"customer-6\", \"customer-7\"",
            b"W/\"customer-7\"",
            b"*",
        ] {
            assert!(
                if_none_match_holds(&asking(&[field]), tag),
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        assert!(if_none_match_holds(
            &asking(&[b"\"customer-6\"", b"\"customer-7\""]),
            tag
        ));
    }

    #[test]
    fn if_none_match_of_another_tag_or_malformed_holds_not() {
        let tag = "\"customer-7\"";
        for field in [
            &b"\"customer-6\""[..],
            b"customer-7",
            b"",
            b"\"customer-7",
            b"\xff\xfe",
        ] {
            assert!(
                !if_none_match_holds(&asking(&[field]), tag),
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        assert!(!if_none_match_holds(&HeaderMap::new(), tag));
    }
}
