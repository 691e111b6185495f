//! The /v1 routes of banks and auditors, and the operational routes.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    blocking, ApiError, ApiJson, ApiQuery, Caller, JsonBody, Presented, Shared,
    MAX_BATCH_BODY_BYTES,
};
use crate::ca::{pem_certificate, Issued, Reason};
use crate::ra::TellerRequestDetails;
use crate::ra::{Principal, StatusChange};
use crate::store::{CertRecord, RequestStatus};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequestBody {
    profile: String,
    csr: String,
    subject: String,
}

#[derive(Serialize)]
pub struct IssuedBody {
    serial: String,
    issuer: String,
    certificate: String,
    chain: Vec<String>,
}

impl From<Issued> for IssuedBody {
    fn from(i: Issued) -> Self {
        IssuedBody {
            serial: i.serial.clone(),
            issuer: i.issuer.as_str().into(),
            certificate: pem_certificate(&i.der),
            chain: i.chain.iter().map(|c| c.pem()).collect(),
        }
    }
}

#[derive(Serialize)]
pub struct CertificateBody {
    serial: String,
    issuer: String,
    profile: String,
    status: &'static str,
    not_before: i64,
    not_after: i64,
    revoked_at: Option<i64>,
    revocation_reason: Option<&'static str>,
    certificate: Option<String>,
}

impl From<CertRecord> for CertificateBody {
    fn from(c: CertRecord) -> Self {
        let (status, reason) = match c.revocation {
            None => ("good", None),
            Some(r) if r.reason_code == Some(crate::ca::HOLD_REASON_CODE) => {
                ("on_hold", Some("certificateHold"))
            }
            Some(r) => (
                "revoked",
                Some(
                    r.reason_code
                        .and_then(Reason::from_code)
                        .map(Reason::name)
                        .unwrap_or("unspecified"),
                ),
            ),
        };
        CertificateBody {
            serial: c.serial,
            issuer: c.issuer.as_str().into(),
            profile: c.profile,
            status,
            not_before: c.not_before,
            not_after: c.not_after,
            revoked_at: c.revocation.map(|r| r.revoked_at),
            revocation_reason: reason,
            certificate: c.cert_der.as_deref().map(pem_certificate),
        }
    }
}

fn created(body: IssuedBody) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

pub async fn request_certificate(
    State(state): State<Shared>,
    presented: Presented,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let issued = blocking(move || {
        // Authenticated here, in the request's one blocking call (see `Presented`).
        let who = presented.authenticate(&state.signet)?;
        let body: CertificateRequestBody = body.decode()?;
        let issued = state.signet.registrar.request_certificate(
            &who,
            &body.profile,
            body.csr.as_bytes(),
            &body.subject,
        )?;
        state.metrics.issued();
        Ok(issued)
    })
    .await?;
    Ok(created(issued.into()))
}

/// `POST /v1/certificates/batch`: `{"results": [...]}`, one per item in order: what
/// `POST /v1/certificates` answers with 201 (serial, issuer, certificate, chain), or
/// `{"error": ...}` with the code that route would give (the others are issued regardless).
pub async fn request_certificates(
    State(state): State<Shared>,
    presented: Presented,
    body: JsonBody<MAX_BATCH_BODY_BYTES>,
) -> Result<Json<Value>, ApiError> {
    let results = blocking(move || {
        let who = presented.authenticate(&state.signet)?;
        let items = body
            .decode::<BatchBody<CertificateRequestBody>>()?
            .items()?;
        let items: Vec<_> = items
            .iter()
            .map(|i| (i.profile.as_str(), i.csr.as_bytes(), i.subject.as_str()))
            .collect();
        let results = state.signet.registrar.request_certificates(&who, &items)?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(issued) => {
                    state.metrics.issued();
                    serde_json::to_value(IssuedBody::from(issued)).unwrap_or_default()
                }
                Err(e) => ApiError::from(e).body(),
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(serde_json::json!({ "results": results })))
}

pub async fn get_certificate(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(serial): Path<String>,
) -> Result<Json<CertificateBody>, ApiError> {
    let rec = blocking(move || Ok(state.signet.registrar.own_certificate(&who, &serial)?)).await?;
    Ok(Json(rec.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    subject_serial: String,
}

pub async fn search_certificates(
    State(state): State<Shared>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<SearchBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let recs = blocking(move || {
        Ok(state
            .signet
            .registrar
            .search_by_subject_serial(&who, &body.subject_serial)?)
    })
    .await?;
    let list: Vec<CertificateBody> = recs.into_iter().map(Into::into).collect();
    Ok(Json(serde_json::json!({ "certificates": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    reason: String,
    /// RFC 3339 UTC, e.g. 2026-11-01T00:00:00Z.
    invalidity_date: Option<String>,
}

async fn change(
    state: Shared,
    who: Principal,
    serial: String,
    change: StatusChange,
) -> Result<Json<CertificateBody>, ApiError> {
    let st = state.clone();
    let rec =
        blocking(move || Ok(st.signet.registrar.change_status(&who, &serial, change)?)).await?;
    state.publish.status_changed();
    Ok(Json(rec.into()))
}

pub async fn revoke(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(serial): Path<String>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> Result<Json<CertificateBody>, ApiError> {
    let reason = Reason::parse_for_revocation(&body.reason).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_reason",
            format!(
                "{:?} is not a revocation reason of Signet's certificates (RFC 5280; for certificateHold use .../hold; aACompromise is for attribute certificates)",
                body.reason
            ),
        )
    })?;
    let invalidity = body
        .invalidity_date
        .as_deref()
        .map(|d| {
            crate::clock::parse_utc(d).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_request",
                    "invalidity_date must look like 2026-11-01T00:00:00Z",
                )
            })
        })
        .transpose()?;
    change(state, who, serial, StatusChange::Revoke(reason, invalidity)).await
}

pub async fn hold(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(serial): Path<String>,
) -> Result<Json<CertificateBody>, ApiError> {
    change(state, who, serial, StatusChange::Hold).await
}

pub async fn release(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(serial): Path<String>,
) -> Result<Json<CertificateBody>, ApiError> {
    change(state, who, serial, StatusChange::Release).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TellerRequestBody {
    csr: String,
    subject: String,
}

pub async fn submit_teller_request(
    State(state): State<Shared>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<TellerRequestBody>,
) -> Result<Response, ApiError> {
    let rec = blocking(move || {
        let registrar = &state.signet.registrar;
        let rec = registrar.submit_teller_request(&who, body.csr.as_bytes(), &body.subject)?;
        Ok(registrar.describe_teller_request(rec))
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(TellerRequestView::from(rec))).into_response())
}

/// A teller request as the API shows it (its CSR is not repeated).
#[derive(Serialize)]
pub struct TellerRequestView {
    id: String,
    /// `certificate` (from a CSR) or `hsm-key`.
    kind: String,
    /// pending, approved, expired or rejected (a pending request past its expiry is expired).
    status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    subject: String,
    /// SHA-256 (hex) of the SubjectPublicKeyInfo the certificate would carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    teller_id: Option<String>,
    /// The teller a key request is for: `{employee_id, name}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    teller: Option<Value>,
    requested_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_by_holder: Option<String>,
    created_at: i64,
    expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
}

impl From<TellerRequestDetails> for TellerRequestView {
    fn from(d: TellerRequestDetails) -> Self {
        let r = d.record;
        TellerRequestView {
            id: r.id,
            kind: r.kind,
            status: r.status.as_str(),
            subject: r.subject,
            public_key_sha256: d.public_key_sha256,
            teller_id: r.teller_id,
            teller: d
                .teller
                .map(|t| serde_json::json!({"employee_id": t.employee_id, "name": t.name})),
            requested_by: r.requested_by,
            requested_by_holder: r.requested_by_holder,
            created_at: r.created_at,
            expires_at: r.expires_at,
            decided_by: r.decided_by,
            decided_at: r.decided_at,
            decision_reason: r.decision_reason,
            serial: r.serial,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TellerRequestsQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/teller-requests` (teller-admin, auditor): the bank's requests, newest first.
pub async fn teller_requests(
    State(state): State<Shared>,
    Caller(who): Caller,
    ApiQuery(q): ApiQuery<TellerRequestsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = q
        .status
        .map(|s| {
            RequestStatus::parse(&s).map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("status {s:?} is not one of pending, approved, expired, rejected"),
                )
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=crate::ra::MAX_TELLER_REQUESTS_LISTED).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "limit {limit} is not from 1 to {}",
                crate::ra::MAX_TELLER_REQUESTS_LISTED
            ),
        ));
    }
    let requests = blocking(move || {
        Ok(state
            .signet
            .registrar
            .teller_requests(&who, status, limit)?)
    })
    .await?;
    let requests: Vec<TellerRequestView> = requests.into_iter().map(Into::into).collect();
    Ok(Json(serde_json::json!({ "requests": requests })))
}

/// `GET /v1/teller-requests/{id}` (teller-admin, auditor).
pub async fn teller_request(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<TellerRequestView>, ApiError> {
    let rec = blocking(move || Ok(state.signet.registrar.teller_request(&who, &id)?)).await?;
    Ok(Json(rec.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    reason: String,
}

/// `POST /v1/teller-requests/{id}/reject` (teller-admin, its filer included): declines a
/// pending request, saying why.
pub async fn reject_teller_request(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RejectBody>,
) -> Result<Json<TellerRequestView>, ApiError> {
    let rec = blocking(move || {
        Ok(state
            .signet
            .registrar
            .reject_teller_request(&who, &id, &body.reason)?)
    })
    .await?;
    Ok(Json(rec.into()))
}

pub async fn approve_teller_request(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let approved = blocking(move || {
        let approved = state.signet.registrar.approve_teller_request(&who, &id)?;
        state.metrics.issued();
        Ok(approved)
    })
    .await?;
    Ok(match approved {
        crate::ra::Approved::Certificate(issued) => created(issued.into()),
        crate::ra::Approved::TellerKey(k) => {
            let k = *k;
            let body: IssuedBody = k.issued.into();
            (
                StatusCode::CREATED,
                Json(serde_json::json!({
                    "key_id": k.key.id,
                    "activation_code": k.activation_code.as_str(),
                    "serial": body.serial,
                    "issuer": body.issuer,
                    "certificate": body.certificate,
                    "chain": body.chain,
                })),
            )
                .into_response()
        }
    })
}

#[derive(Deserialize)]
pub struct AuditQuery {
    since: Option<u64>,
    limit: Option<u32>,
}

pub async fn audit_events(
    State(state): State<Shared>,
    Caller(who): Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(500).clamp(1, 5000);
    let events = blocking(move || {
        Ok(state
            .signet
            .registrar
            .tenant_audit_events(&who, q.since.unwrap_or(0), limit)?)
    })
    .await?;
    Ok(Json(serde_json::json!({ "events": events })))
}

pub async fn healthz(State(state): State<Shared>) -> Response {
    let audit_whole = state.signet.authority.auditor().altered().is_none();
    let (hsm, store) = blocking(move || {
        let hsm = state.signet.hsm.is_available();
        let store = state.signet.store.audit_head().is_ok();
        Ok((hsm, store))
    })
    .await
    .unwrap_or((false, false));
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    // An altered audit chain stops certificates and signatures, not revocation, CRLs, OCSP
    // or verification: the process stays up (a restart would not mend it), and says so.
    let (status, overall) = match (hsm && store, audit_whole) {
        (true, true) => (StatusCode::OK, "ok"),
        (true, false) => (StatusCode::OK, "degraded"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    (
        status,
        Json(serde_json::json!({
            "status": overall,
            "hsm": word(hsm),
            "store": word(store),
            "audit": if audit_whole { "ok" } else { "altered" },
        })),
    )
        .into_response()
}

pub async fn metrics(State(state): State<Shared>) -> Response {
    let text = state.metrics.render(
        &state.signet.hsm.stats(),
        state.signet.authority.certificates_given_to_sign(),
        state.signet.authority.auditor().altered().is_some(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationBody {
    /// The instruction, base64.
    instruction: String,
    /// The signature: base64 of DER, PEM text, or a JWS.
    signature: String,
    #[serde(default)]
    receipt: bool,
}

fn decode_b64(field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    let engine = &base64::engine::general_purpose::STANDARD;
    // Line breaks (and any other whitespace) are allowed; most bodies have none, and building
    // a cleaned copy char by char showed in the verification profile.
    let decoded = if value.bytes().all(|b| b.is_ascii_graphic()) {
        engine.decode(value)
    } else {
        let cleaned: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        engine.decode(cleaned)
    };
    decoded
        .map_err(|_| ApiError::bad_request("invalid_request", format!("`{field}` is not base64")))
}

/// The verifier, for a caller allowed to verify.
fn verifier_for<'s>(
    state: &'s Shared,
    who: &crate::ra::Principal,
) -> Result<&'s crate::verify::Verifier, ApiError> {
    state.signet.registrar.authorize_verification(who)?;
    state
        .signet
        .verifier
        .as_ref()
        .ok_or_else(verifier_unavailable)
}

fn verifier_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ca_not_initialized",
        "verification is not configured: it needs an initialized CA and policies/payment-signature.toml",
    )
}

fn verify_failure(e: crate::verify::VerifyError) -> ApiError {
    tracing::error!(error = %e, "verification could not decide");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "Signet could not decide (its records are unavailable); retry shortly",
    )
}

/// An instruction and its signature from a request body, decoded.
struct PresentedBody {
    instruction: Vec<u8>,
    signature: Vec<u8>,
    receipt: bool,
}

impl PresentedBody {
    /// `at` names the body's place in error messages ("" for a single verification,
    /// "items[3]." in a batch).
    fn decode(body: VerificationBody, at: &str) -> Result<PresentedBody, ApiError> {
        let instruction = decode_b64(&format!("{at}instruction"), &body.instruction)?;
        let signature = if body.signature.trim_start().starts_with("-----BEGIN")
            || body.signature.trim_start().starts_with('{')
            || body.signature.contains('.')
        {
            body.signature.into_bytes()
        } else {
            decode_b64(&format!("{at}signature"), &body.signature)?
        };
        Ok(PresentedBody {
            instruction,
            signature,
            receipt: body.receipt,
        })
    }

    fn presented(&self) -> crate::verify::Presented<'_> {
        crate::verify::Presented {
            instruction: &self.instruction,
            signature: &self.signature,
        }
    }
}

/// A report as the API answers it: serialized once, with the receipt over it if asked for.
fn report_body(
    signet: &crate::app::Signet,
    report: &crate::verify::Report,
    want_receipt: bool,
) -> Result<Value, ApiError> {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if want_receipt {
        let receipt = crate::app::make_receipt(signet, &value).map_err(|e| {
            tracing::error!(error = %e, "receipt");
            let code = match e {
                crate::app::ReceiptFailure::Unavailable(_) => "hsm_unavailable",
                crate::app::ReceiptFailure::CertificateExpired(_) => {
                    "validation_certificate_expired"
                }
            };
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
        })?;
        value["receipt"] = Value::String(receipt);
    }
    Ok(value)
}

/// `POST /v1/verifications`: the report (200) for anything well formed, even a signature that
/// does not parse.
pub async fn verify_signature(
    State(state): State<Shared>,
    presented: Presented,
    body: JsonBody,
) -> Result<Response, ApiError> {
    blocking(move || {
        // Authenticated here, in the request's one blocking call (see `Presented`).
        let who = presented.authenticate(&state.signet)?;
        let item = PresentedBody::decode(body.decode()?, "")?;
        let verifier = verifier_for(&state, &who)?;
        let report = verifier
            .verify(
                &item.instruction,
                &item.signature,
                &who.actor(),
                Some(&who.tenant.id),
            )
            .map_err(verify_failure)?;
        if !item.receipt {
            // Serialized once, straight to the body.
            return Ok(Json(report).into_response());
        }
        Ok(Json(report_body(&state.signet, &report, true)?).into_response())
    })
    .await
}

/// Most items (instructions, certificate requests) one batch may hold (its body is bounded by
/// [`MAX_BATCH_BODY_BYTES`] too).
pub const MAX_BATCH_ITEMS: usize = 64;

/// The body of a batch route: `{"items": [...]}`, each item what the single route takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<T> {
    items: Vec<T>,
}

impl<T> BatchBody<T> {
    /// The items, if there are 1 to [`MAX_BATCH_ITEMS`] of them.
    fn items(self) -> Result<Vec<T>, ApiError> {
        let n = self.items.len();
        if n == 0 || n > MAX_BATCH_ITEMS {
            return Err(ApiError::bad_request(
                "invalid_batch",
                format!("a batch holds 1 to {MAX_BATCH_ITEMS} items; this one has {n}"),
            ));
        }
        Ok(self.items)
    }
}

/// `POST /v1/verifications/batch`: `{"results": [...]}`, one per item in order: its report
/// (as `POST /v1/verifications` answers it), or `{"error": ...}` for an item whose record
/// could not be written (the others stand; retry that one).
pub async fn verify_signatures(
    State(state): State<Shared>,
    presented: Presented,
    body: JsonBody<MAX_BATCH_BODY_BYTES>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let who = presented.authenticate(&state.signet)?;
        let items = body
            .decode::<BatchBody<VerificationBody>>()?
            .items()?
            .into_iter()
            .enumerate()
            .map(|(i, item)| PresentedBody::decode(item, &format!("items[{i}].")))
            .collect::<Result<Vec<_>, _>>()?;
        let verifier = verifier_for(&state, &who)?;
        let presented: Vec<_> = items.iter().map(PresentedBody::presented).collect();
        let reports = verifier.verify_batch(&presented, &who.actor(), Some(&who.tenant.id));
        // Written straight to the body, each report serialized once (a JSON tree of a whole
        // batch's reports showed in the profile).
        let mut body = Vec::with_capacity(items.len() * 4096);
        body.extend_from_slice(b"{\"results\":[");
        for (i, (report, item)) in reports.into_iter().zip(&items).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let written = match report.map_err(verify_failure) {
                Ok(r) if !item.receipt => serde_json::to_writer(&mut body, &r),
                Ok(r) => match report_body(&state.signet, &r, true) {
                    Ok(v) => serde_json::to_writer(&mut body, &v),
                    Err(e) => serde_json::to_writer(&mut body, &e.body()),
                },
                Err(e) => serde_json::to_writer(&mut body, &e.body()),
            };
            written.map_err(|e| {
                tracing::error!(error = %e, "cannot write a report");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the reports could not be written",
                )
            })?;
        }
        body.extend_from_slice(b"]}");
        Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateValidationBody {
    /// PEM, or base64 of DER.
    certificate: String,
}

/// `POST /v1/verifications/certificate`: a certificate alone.
pub async fn verify_certificate(
    State(state): State<Shared>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<CertificateValidationBody>,
) -> Result<Json<Value>, ApiError> {
    let der = if body.certificate.trim_start().starts_with("-----BEGIN") {
        body.certificate.into_bytes()
    } else {
        decode_b64("certificate", &body.certificate)?
    };
    blocking(move || {
        let verifier = verifier_for(&state, &who)?;
        let report = verifier
            .verify_certificate(&der, &who.actor(), Some(&who.tenant.id))
            .map_err(verify_failure)?;
        Ok(Json(serde_json::to_value(&report).unwrap_or_default()))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TellerBody {
    employee_id: String,
    name: String,
}

/// `POST /v1/tellers` (teller-admin): registers a teller of the caller's bank.
pub async fn add_teller(
    State(state): State<Shared>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<TellerBody>,
) -> Result<Response, ApiError> {
    let t = blocking(move || {
        Ok(state
            .signet
            .registrar
            .register_teller(&who, &body.employee_id, &body.name)?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"id": t.id, "employee_id": t.employee_id, "name": t.name})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TellerKeyBody {
    employee_id: String,
}

/// `POST /v1/teller-keys` (teller-admin): asks for an HSM-held key for a teller.
pub async fn request_teller_key(
    State(state): State<Shared>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<TellerKeyBody>,
) -> Result<Response, ApiError> {
    let r = blocking(move || {
        let registrar = &state.signet.registrar;
        let rec = registrar.request_teller_key(&who, &body.employee_id)?;
        Ok(registrar.describe_teller_request(rec))
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(TellerRequestView::from(r))).into_response())
}

/// `GET /v1/signing-keys`: the caller's usable keys.
pub async fn signing_keys(
    State(state): State<Shared>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    let keys = blocking(move || Ok(state.signet.signing.usable_keys(&who)?)).await?;
    let list: Vec<Value> = keys
        .into_iter()
        .map(|k| {
            serde_json::json!({
                "id": k.key.id,
                "kind": k.key.kind,
                "status": if k.key.locked { "locked" } else if k.key.kind == "teller" && k.key.pin_hash.is_none() { "needs_pin" } else { "active" },
                "certificate": pem_certificate(&k.certificate_der),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "keys": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    activation_code: Option<String>,
    old_pin: Option<String>,
    new_pin: String,
}

/// `POST /v1/signing-keys/{id}/pin`.
pub async fn set_pin(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PinBody>,
) -> Result<StatusCode, ApiError> {
    let new_pin = zeroize::Zeroizing::new(body.new_pin);
    let old_pin = body.old_pin.map(zeroize::Zeroizing::new);
    blocking(move || {
        state.signet.signing.set_pin(
            &who,
            &id,
            body.activation_code.as_deref(),
            old_pin.as_deref().map(|s| s.as_str()),
            &new_pin,
        )?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/signing-keys/{id}/unlock` (teller-admin).
pub async fn unlock_key(
    State(state): State<Shared>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || Ok(state.signet.signing.unlock(&who, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureBody {
    key: String,
    format: String,
    data: Option<String>,
    hashes: Option<Vec<String>>,
    pin: Option<String>,
}

/// `POST /v1/signatures`: `data` (base64) with any format, or `hashes` (base64 SHA-256
/// digests) with cms-detached; `pin` for teller keys.
pub async fn create_signatures(
    State(state): State<Shared>,
    Caller(who): Caller,
    ApiJson(body): ApiJson<SignatureBody>,
) -> Result<Json<Value>, ApiError> {
    use crate::sign::{SignFormat, SignInput};
    let format = SignFormat::parse(&body.format).ok_or_else(|| {
        ApiError::bad_request(
            "unknown_format",
            format!(
                "{:?} is not a format: use cms-detached, cms-attached or jws",
                body.format
            ),
        )
    })?;
    let input = match (body.data, body.hashes) {
        (Some(d), None) => SignInput::Data(decode_b64("data", &d)?),
        (None, Some(hs)) => SignInput::Hashes(
            hs.iter()
                .enumerate()
                .map(|(i, h)| decode_b64(&format!("hashes[{i}]"), h))
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give either `data` or `hashes`",
            ))
        }
    };
    let pin = body.pin.map(zeroize::Zeroizing::new);
    let signed = blocking(move || {
        Ok(state
            .signet
            .signing
            .sign(&who, &body.key, format, input, pin)?)
    })
    .await?;
    Ok(Json(serde_json::json!({
        "format": signed.format.as_str(),
        "signatures": signed.signatures,
    })))
}

/// Decodes `body` as each JSON request body the API accepts, exactly as the routes do
/// ([`super::decode_json_body`]), and says per route what came of it. For the fuzz target
/// and tests: untrusted bytes reach these types and nothing else before a handler runs.
pub fn decode_request_bodies(body: &[u8]) -> Vec<(&'static str, Result<(), ApiError>)> {
    fn one<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(), ApiError> {
        super::decode_json_body::<T>(body).map(drop)
    }
    fn batch<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(), ApiError> {
        super::decode_json_body_within::<T>(body, MAX_BATCH_BODY_BYTES).map(drop)
    }
    vec![
        ("POST /v1/certificates", one::<CertificateRequestBody>(body)),
        (
            "POST /v1/certificates/batch",
            batch::<BatchBody<CertificateRequestBody>>(body),
        ),
        ("POST /v1/certificates/search", one::<SearchBody>(body)),
        (
            "POST /v1/certificates/{serial}/revoke",
            one::<RevokeBody>(body),
        ),
        ("POST /v1/teller-requests", one::<TellerRequestBody>(body)),
        (
            "POST /v1/teller-requests/{id}/reject",
            one::<RejectBody>(body),
        ),
        ("POST /v1/verifications", one::<VerificationBody>(body)),
        (
            "POST /v1/verifications/batch",
            batch::<BatchBody<VerificationBody>>(body),
        ),
        (
            "POST /v1/verifications/certificate",
            one::<CertificateValidationBody>(body),
        ),
        ("POST /v1/tellers", one::<TellerBody>(body)),
        ("POST /v1/teller-keys", one::<TellerKeyBody>(body)),
        ("POST /v1/signing-keys/{id}/pin", one::<PinBody>(body)),
        ("POST /v1/signatures", one::<SignatureBody>(body)),
    ]
}

#[cfg(test)]
mod tests {
    use super::decode_b64;

    #[test]
    fn base64_fields_decode_with_or_without_line_breaks() {
        assert_eq!(decode_b64("f", "cGF5IDE=").unwrap(), b"pay 1");
        assert_eq!(decode_b64("f", "cGF5\r\n IDE=\n").unwrap(), b"pay 1");
        assert_eq!(decode_b64("f", "cGF5\u{a0}IDE=").unwrap(), b"pay 1");
    }

    #[test]
    fn a_field_that_is_not_base64_is_a_bad_request_naming_it() {
        let e = decode_b64("signature", "not base64!").unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_request");
        assert!(
            e.message.contains("`signature` is not base64"),
            "{}",
            e.message
        );
    }
}
