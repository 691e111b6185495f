//! The HTTP front end (axum): parses and authenticates, hands every decision to the RA and
//! every signature to the CA, maps their errors to stable codes. Blocking work (HSM, SQLite)
//! runs on tokio's blocking pool.

mod error;
mod handlers;
pub use handlers::MAX_BATCH_ITEMS;
mod metrics;
mod openapi;
mod publish;
pub mod tls;

pub use error::ApiError;
pub use handlers::decode_request_bodies;
pub use metrics::Metrics;
pub use openapi::{Route, V1_ROUTES};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use tower_http::timeout::TimeoutLayer;

use crate::app::Signet;
use crate::ra::{Principal, MAX_TOKEN_LEN};

/// Largest request body on any route but the batch routes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest body of a batch route (`/v1/certificates/batch`, `/v1/verifications/batch`): 64
/// items of a few KiB each.
pub const MAX_BATCH_BODY_BYTES: usize = 256 * 1024;
/// Longest a request may take before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares.
pub struct AppState {
    pub signet: Signet,
    pub metrics: Metrics,
    pub publish: publish::Publisher,
}

pub type Shared = Arc<AppState>;

/// Runs blocking work (HSM, SQLite) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "blocking task failed");
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request could not be completed",
        ))
    })
}

/// The stop signal of the background tasks. Each finishes the store or HSM work it has begun
/// (aborting the task would not stop that work, which runs on a blocking thread), so that no
/// event is appended to the audit chain after the shutdown checkpoint.
#[derive(Clone)]
pub(crate) struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// Resolves once a stop is asked for (at once if it already was).
    pub(crate) async fn requested(&mut self) {
        // An error means the sender is gone: that is a stop too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub(crate) fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Sleeps for `d`, cut short by a stop; true when the task may go on.
    pub(crate) async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.requested() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// Longest the shutdown waits for the background tasks' current work (a CRL of a million
/// entries takes seconds) before it checkpoints anyway.
const BACKGROUND_STOP_WAIT: Duration = Duration::from_secs(60);

/// Deepest nesting of JSON arrays and objects a request body may have (the API's bodies need
/// 2). Checked by a byte scan before serde sees the body.
pub const MAX_JSON_DEPTH: usize = 32;

/// JSON body extractor whose rejections are API errors with stable codes; bodies of more than
/// `LIMIT` bytes are refused (413).
pub struct ApiJson<T, const LIMIT: usize = MAX_BODY_BYTES>(pub T);

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S> for ApiJson<T, LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_json_body(req, state, LIMIT).await?;
        decode_json_body_within(&bytes, LIMIT).map(ApiJson)
    }
}

/// Query-string extractor whose rejections are API errors with a stable code
/// (`invalid_query`) rather than axum's plain text.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection| {
                ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "the query string is not understood: {}",
                        rejection.body_text()
                    ),
                )
            })
    }
}

/// A JSON body read but not yet decoded, for the routes that authenticate in the same
/// blocking call as their work ([`Presented`]): its refusals (415, 413, 400) wait until the
/// caller is authenticated, so that they come in the order [`ApiJson`] after [`Caller`] gives
/// them everywhere else.
pub struct JsonBody<const LIMIT: usize = MAX_BODY_BYTES>(Result<axum::body::Bytes, ApiError>);

impl<const LIMIT: usize> JsonBody<LIMIT> {
    /// The body as `T`, or why not (as [`ApiJson`] would refuse it).
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        decode_json_body_within(&self.0?, LIMIT)
    }
}

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for JsonBody<LIMIT> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(JsonBody(read_json_body(req, state, LIMIT).await))
    }
}

/// A JSON request's body bytes: 415 for another content type, 413 past `limit`.
async fn read_json_body<S: Send + Sync>(
    req: Request,
    state: &S,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    if !is_json_content_type(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ));
    }
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => body_too_large(limit),
            _ => ApiError::bad_request("malformed_json", "the body could not be read in full"),
        })
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request bodies are limited to {limit} bytes on this route"),
    )
}

/// `application/json` or any `application/*+json`, parameters ignored.
fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

/// Reads a JSON request body as `T`, as every route does. A body over [`MAX_BODY_BYTES`] is
/// 413 `body_too_large`; one nested deeper than [`MAX_JSON_DEPTH`] is 400 `json_too_deep`
/// (found by a linear scan before any parser recurses); one that is not JSON is 400
/// `malformed_json`; JSON without the expected fields is 400 `invalid_request`.
pub fn decode_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    decode_json_body_within(bytes, MAX_BODY_BYTES)
}

/// [`decode_json_body`] with another size limit (the batch routes').
pub fn decode_json_body_within<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, ApiError> {
    if bytes.len() > limit {
        return Err(body_too_large(limit));
    }
    if json_depth_exceeds(bytes, MAX_JSON_DEPTH) {
        return Err(ApiError::bad_request(
            "json_too_deep",
            format!("the JSON body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request(
                "invalid_request",
                format!(
                    "the JSON body does not have the expected fields: {}",
                    without_values(&e.to_string())
                ),
            )
        } else {
            ApiError::bad_request(
                "malformed_json",
                format!(
                    "the body is not valid JSON: {}",
                    without_values(&e.to_string())
                ),
            )
        }
    })
}

/// serde's message about a value of the wrong type or variant, without the value: it may be a
/// PIN or a token sent as a number ("invalid type: integer `123456`, expected a string"), and
/// answers end up in clients' and proxies' logs. Field names and positions stay.
fn without_values(message: &str) -> String {
    const ECHOING: [&str; 3] = ["invalid type: ", "invalid value: ", "unknown variant "];
    if !ECHOING.iter().any(|p| message.starts_with(p)) {
        return message.to_string();
    }
    let (head, tail) = message
        .rsplit_once(", expected")
        .map_or((message, ""), |(h, t)| (h, t));
    let kind = head.find(['`', '"']).map_or(head, |at| &head[..at]);
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!(", expected{tail}")
    };
    format!("{}{tail}", kind.trim_end())
}

/// Whether `[` / `{` outside strings open more than `max` levels at some point. Does not
/// validate anything else (serde does that next); never allocates.
fn json_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The authenticated caller, from `Authorization: Bearer <token>` or a TLS client certificate:
/// [`Presented`] checked on a blocking thread before the handler runs.
pub struct Caller(pub Principal);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let presented = Presented::from_request_parts(parts, state).await?;
        let state = state.clone();
        let principal = blocking(move || presented.authenticate(&state.signet)).await?;
        Ok(Caller(principal))
    }
}

/// What a request presents to authenticate with, not yet checked: its bearer token or TLS
/// client certificate, and where it comes from. The busiest routes (certificate requests and
/// verifications, single and batch) check it with [`Presented::authenticate`] inside the
/// blocking call that does their work: a second hop to the blocking pool cost about a tenth of
/// single verification's rate. Every other route takes a [`Caller`]. Either way, a request that
/// presents no credential, or comes from an address locked out for failed attempts, is refused
/// before its body is read.
pub struct Presented {
    token: Option<String>,
    origin: String,
    client: Option<tls::ClientCert>,
}

impl Presented {
    fn of(parts: &Parts) -> Presented {
        // No Authorization header: no token. One that is not a bearer token of a sane length:
        // an empty (malformed) token, which counts as a failed authentication.
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .ok()
                    .filter(|v| v.len() <= MAX_TOKEN_LEN + 16)
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(|t| t.trim().to_string())
                    .unwrap_or_default()
            });
        Presented {
            token,
            origin: tls::peer_of(parts),
            client: parts.extensions.get::<tls::ClientCert>().cloned(),
        }
    }

    /// The principal, or the refusal [`Caller`] gives. Blocking (it reads the store): call it
    /// on a blocking thread.
    pub fn authenticate(self, signet: &Signet) -> Result<Principal, ApiError> {
        let Presented {
            token,
            origin,
            client,
        } = self;
        let registrar = &signet.registrar;
        match (token, client) {
            // A client certificate speaks only when no bearer token does.
            (None, Some(c)) => {
                use crate::ra::ClientCertificate;
                let check = match &c.verdict {
                    tls::ClientVerdict::Invalid(why) => ClientCertificate::Invalid(why),
                    tls::ClientVerdict::Unmapped => ClientCertificate::Unmapped,
                    tls::ClientVerdict::Mapped {
                        tenant,
                        role,
                        holder,
                    } => ClientCertificate::Mapped {
                        tenant,
                        role: *role,
                        holder: holder.as_deref(),
                    },
                };
                registrar.authenticate_client_certificate(&c.fingerprint, check, &origin)
            }
            (token, _) => registrar.authenticate(token.as_deref(), &origin),
        }
        .map_err(ApiError::from)
    }
}

impl FromRequestParts<Shared> for Presented {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let presented = Presented::of(parts);
        // In memory only (no store): fine on an async worker.
        state
            .signet
            .registrar
            .refuse_at_once(
                presented.token.is_some() || presented.client.is_some(),
                &presented.origin,
            )
            .map_err(ApiError::from)?;
        Ok(presented)
    }
}

/// Every route of the service (the OpenAPI document lists the /v1 ones).
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/certificates", post(handlers::request_certificate))
        .route(
            "/v1/certificates/batch",
            post(handlers::request_certificates).layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES)),
        )
        .route(
            "/v1/certificates/search",
            post(handlers::search_certificates),
        )
        .route("/v1/certificates/{serial}", get(handlers::get_certificate))
        .route("/v1/certificates/{serial}/revoke", post(handlers::revoke))
        .route("/v1/certificates/{serial}/hold", post(handlers::hold))
        .route("/v1/certificates/{serial}/release", post(handlers::release))
        .route(
            "/v1/teller-requests",
            get(handlers::teller_requests).post(handlers::submit_teller_request),
        )
        .route("/v1/teller-requests/{id}", get(handlers::teller_request))
        .route(
            "/v1/teller-requests/{id}/approve",
            post(handlers::approve_teller_request),
        )
        .route(
            "/v1/teller-requests/{id}/reject",
            post(handlers::reject_teller_request),
        )
        .route("/v1/audit-events", get(handlers::audit_events))
        .route("/v1/verifications", post(handlers::verify_signature))
        .route(
            "/v1/verifications/batch",
            post(handlers::verify_signatures).layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES)),
        )
        .route("/v1/tellers", post(handlers::add_teller))
        .route("/v1/teller-keys", post(handlers::request_teller_key))
        .route("/v1/signing-keys", get(handlers::signing_keys))
        .route("/v1/signing-keys/{id}/pin", post(handlers::set_pin))
        .route("/v1/signing-keys/{id}/unlock", post(handlers::unlock_key))
        .route("/v1/signatures", post(handlers::create_signatures))
        .route(
            "/v1/verifications/certificate",
            post(handlers::verify_certificate),
        )
        .route("/v1/ca", get(publish::ca_chain))
        .route("/ca/{file}", get(publish::ca_certificate))
        .route("/crl/{file}", get(publish::crl))
        .route("/ocsp", post(publish::ocsp_post))
        .route("/ocsp/{*request}", get(publish::ocsp_get))
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(handlers::no_route)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Counts requests and their latency per route.
async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .observe_request(&route, resp.status().as_u16(), start.elapsed());
    resp
}

/// Voids, while serving, the issuances recorded but not signed within the issuance timeout
/// (those a crashed process left and those whose store write failed after signing failed), as
/// the start-up does; their serials then go on the next CRL.
async fn sweep_interrupted(state: Shared, mut stop: Stopping) {
    let timeout = state.signet.authority.settings().issuance_timeout_secs;
    let every = Duration::from_secs((timeout / 2).clamp(1, 60));
    loop {
        if !stop.pause(every).await {
            return;
        }
        let st = state.clone();
        let result = blocking(move || {
            st.signet
                .authority
                .resolve_interrupted("service:void-sweep")
                .map_err(ApiError::from)
        })
        .await;
        match result {
            Ok(voided) if !voided.is_empty() => {
                state.publish.status_changed();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(code = e.code, error = %e.message, "sweep of interrupted issuances failed; will retry")
            }
        }
    }
}

/// How often the service forgets replay-guard keys past twice their window (and once at start).
const REPLAY_SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Pause between two transactions of one sweep.
const REPLAY_SWEEP_PAUSE: Duration = Duration::from_millis(100);

async fn forget_expired_replay_keys(state: Shared, mut stop: Stopping) {
    loop {
        // One transaction at a time until none that old are left: other writers commit between.
        loop {
            let st = state.clone();
            let result = blocking(move || {
                Ok(match &st.signet.verifier {
                    Some(v) => v
                        .forget_expired_replay_keys("service:replay-sweep")
                        .map_err(|e| e.to_string()),
                    None => Ok(0),
                })
            })
            .await
            .unwrap_or_else(|e| Err(e.message.to_string()));
            match result {
                Ok(0) => break,
                Ok(keys) => {
                    tracing::info!(keys, "forgot replay-guard keys past twice their window");
                    // A backlog (the first start after an upgrade) must not hog the writer.
                    if !stop.pause(REPLAY_SWEEP_PAUSE).await {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "forgetting expired replay-guard keys failed; will retry");
                    break;
                }
            }
        }
        if !stop.pause(REPLAY_SWEEP_EVERY).await {
            return;
        }
    }
}

async fn checkpoint_at_shutdown(state: &Shared) {
    let s = state.clone();
    match tokio::task::spawn_blocking(move || s.signet.shutdown()).await {
        Ok(Ok(())) => tracing::info!("audit checkpoint written; stopped"),
        Ok(Err(e)) => tracing::error!(error = %e, "audit checkpoint at shutdown failed"),
        Err(e) => tracing::error!(error = %e, "shutdown task failed"),
    }
}

/// Serves until `shutdown` resolves; in-flight requests and the background tasks' current work
/// finish (a revocation not yet on a CRL gets one), then the audit head is checkpointed.
/// With `tls`, HTTPS (and client certificates); without, plain HTTP.
pub async fn serve(
    signet: Signet,
    listener: tokio::net::TcpListener,
    tls: Option<tls::TlsSetup>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(AppState {
        publish: publish::Publisher::new(&signet),
        signet,
        metrics: Metrics::default(),
    });
    // Two stops: the sweeps end first, so that a status change they make (a void) is still
    // seen by the CRL refresher, which ends last.
    let (stop_sweeps, sweeps_stopping) = tokio::sync::watch::channel(false);
    let (stop_refresh, refresh_stopping) = tokio::sync::watch::channel(false);
    let sweeps = vec![
        tokio::spawn(sweep_interrupted(
            state.clone(),
            Stopping(sweeps_stopping.clone()),
        )),
        tokio::spawn(forget_expired_replay_keys(
            state.clone(),
            Stopping(sweeps_stopping),
        )),
    ];
    let refresher = tokio::spawn(publish::refresh_crls(
        state.clone(),
        Stopping(refresh_stopping),
    ));
    let app = router(state.clone());
    match tls {
        Some(setup) => tls::serve(app, listener, setup, shutdown).await,
        None => {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await?
        }
    }
    let finishing = async {
        let _ = stop_sweeps.send(true);
        for task in sweeps {
            let _ = task.await;
        }
        let _ = stop_refresh.send(true);
        let _ = refresher.await;
    };
    tokio::pin!(finishing);
    let in_time = tokio::time::timeout(BACKGROUND_STOP_WAIT, &mut finishing)
        .await
        .is_ok();
    if !in_time {
        tracing::warn!(
            "background work (CRL refresh, sweeps) still running after {} s; checkpointing the audit chain now and again when it ends",
            BACKGROUND_STOP_WAIT.as_secs()
        );
    }
    checkpoint_at_shutdown(&state).await;
    if !in_time {
        // Its events must not stay past the last checkpoint. The HSM layer's deadlines end a
        // hung call, so this ends too.
        finishing.await;
        checkpoint_at_shutdown(&state).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        a: Vec<u32>,
    }

    fn code(r: Result<Body, ApiError>) -> (u16, &'static str) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.code)
    }

    #[test]
    fn a_100000_deep_json_array_is_found_too_deep_by_the_scan() {
        assert!(json_depth_exceeds(&[b'['; 100_000], MAX_JSON_DEPTH));
    }

    #[test]
    fn a_json_body_nested_past_the_limit_gets_400_json_too_deep() {
        let deep = "[".repeat(40_000);
        assert!(deep.len() <= MAX_BODY_BYTES);
        assert_eq!(
            code(decode_json_body(deep.as_bytes())),
            (400, "json_too_deep")
        );
    }

    #[test]
    fn a_json_body_nested_exactly_to_the_limit_is_read() {
        let n = MAX_JSON_DEPTH - 2;
        let body = format!("{{\"a\":[7], \"b\": [{}{}]}}", "[".repeat(n), "]".repeat(n));
        let body: Body = decode_json_body(body.as_bytes()).unwrap();
        assert_eq!(body.a, vec![7]);
    }

    #[test]
    fn brackets_inside_json_strings_do_not_count_as_nesting() {
        let body = format!(
            "{{\"a\":[], \"s\": \"{}\\\"{}\"}}",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(!json_depth_exceeds(body.as_bytes(), MAX_JSON_DEPTH));
    }

    #[test]
    fn a_body_over_the_limit_gets_413_before_any_scan() {
        let big = vec![b'['; MAX_BODY_BYTES + 1];
        assert_eq!(code(decode_json_body(&big)), (413, "body_too_large"));
    }

    #[test]
    fn json_without_the_expected_fields_gets_400_invalid_request() {
        assert_eq!(
            code(decode_json_body(b"{\"b\":1}")),
            (400, "invalid_request")
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_not_echoed_in_the_answer() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Pin {
            pin: String,
            mode: Mode,
        }
        #[derive(serde::Deserialize, Debug)]
        enum Mode {
            Sign,
        }
        for body in [
            r#"{"pin": 402917, "mode": "Sign"}"#,
            r#"{"pin": 402917.5, "mode": "Sign"}"#,
            r#"{"pin": "x", "mode": "402917"}"#,
            r#"{"pin": "x", "mode": 402917}"#,
        ] {
            let e = decode_json_body::<Pin>(body.as_bytes()).unwrap_err();
            assert!(!e.message.contains("402917"), "{body}: {}", e.message);
            assert!(e.message.contains("expected"), "{body}: {}", e.message);
        }
    }

    #[test]
    fn broken_json_gets_400_malformed_json() {
        assert_eq!(code(decode_json_body(b"{\"a\": ")), (400, "malformed_json"));
    }

    #[test]
    fn every_request_body_type_refuses_a_deep_body_with_json_too_deep() {
        let deep = "[".repeat(1000);
        for (route, r) in decode_request_bodies(deep.as_bytes()) {
            let e = r.unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "json_too_deep"),
                "{route}"
            );
        }
    }
}
