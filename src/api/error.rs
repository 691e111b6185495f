//! Errors as the API shows them: `{"error":{"code":"...","message":"..."}}`, with a stable
//! code for machines and a sentence for people. Nothing here matches on message text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::ca::CaError;
use crate::hsm::HsmError;
use crate::ra::RaError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The error as the API writes it: `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        resp
    }
}

fn from_hsm(e: &HsmError) -> ApiError {
    if e.is_unavailable() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hsm_unavailable",
            "the HSM is unavailable; retry shortly",
        )
    } else {
        tracing::error!(error = %e, "HSM failure");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hsm_error",
            "the HSM refused the operation; the operator has been told",
        )
    }
}

fn from_store(e: &StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => ApiError::not_found(format!("{m} not found")),
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m.clone()),
        StoreError::SerialTaken(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "try_again",
            "a serial number collided; retry",
        ),
        other => {
            tracing::error!(error = %other, "store failure");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the certificate store is unavailable; retry shortly",
            )
        }
    }
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        match &e {
            CaError::Hsm(h) => from_hsm(h),
            CaError::Store(s) => from_store(s),
            CaError::Audit(crate::audit::AuditError::Hsm(h)) => from_hsm(h),
            CaError::Audit(crate::audit::AuditError::Store(s)) => from_store(s),
            CaError::Audit(crate::audit::AuditError::ChainAltered(_)) => {
                tracing::error!(error = %e, "audit chain altered");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "audit_chain_altered",
                    "the audit log in the database no longer holds what was appended and checkpointed (see the service's log), so this service makes no certificate or signature until the chain matches its checkpoints again; revocations go on",
                )
            }
            CaError::Audit(other) => {
                tracing::error!(error = %other, "audit failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the audit log cannot be written, so nothing was changed; retry shortly",
                )
            }
            CaError::NotInitialized => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ca_not_initialized",
                e.to_string(),
            ),
            CaError::UnknownSerial(_) => ApiError::not_found(e.to_string()),
            CaError::HoldNotAllowed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "hold_not_allowed", e.to_string())
            }
            CaError::InvalidRequest(_) => ApiError::bad_request("invalid_request", e.to_string()),
            CaError::PinKeyNotMade | CaError::PinKeyLost { .. } => {
                tracing::error!(error = %e, "PIN key");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "pin_key_unavailable",
                    "PINs cannot be set or checked until the CA operator puts the token's PIN key in order (see the service's log)",
                )
            }
            _ => {
                tracing::error!(error = %e, "CA failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the CA could not complete the request",
                )
            }
        }
    }
}

impl From<crate::sign::SignError> for ApiError {
    fn from(e: crate::sign::SignError) -> Self {
        use crate::sign::SignError;
        let msg = e.to_string();
        match e {
            SignError::UnknownKey(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_key", msg),
            SignError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg),
            SignError::PinRequired => ApiError::bad_request("pin_required", msg),
            SignError::WrongPin { .. } => ApiError::new(StatusCode::FORBIDDEN, "wrong_pin", msg),
            SignError::Locked => ApiError::new(StatusCode::LOCKED, "key_locked", msg),
            SignError::NoPin => ApiError::new(StatusCode::CONFLICT, "no_pin", msg),
            SignError::Invalid(_) => ApiError::bad_request("invalid_request", msg),
            SignError::Ca(c) => c.into(),
            SignError::Store(s) => from_store(&s),
        }
    }
}

impl From<RaError> for ApiError {
    fn from(e: RaError) -> Self {
        let msg = e.to_string();
        match e {
            RaError::NotACsr(_) => ApiError::bad_request("not_a_csr", msg),
            RaError::CsrSignatureInvalid(_) => ApiError::bad_request("csr_signature_invalid", msg),
            RaError::KeyNotAllowed { .. } => ApiError::bad_request("key_not_allowed", msg),
            RaError::UnknownProfile { .. } => ApiError::bad_request("unknown_profile", msg),
            RaError::Subject(_) | RaError::SubjectValue { .. } => {
                ApiError::bad_request("invalid_subject", msg)
            }
            RaError::MissingSubjectAttribute { .. } => {
                ApiError::bad_request("missing_subject_attribute", msg)
            }
            RaError::NoIdHashKey(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "misconfigured", msg)
            }
            RaError::Invalid(_) => ApiError::bad_request("invalid_request", msg),
            RaError::NotFound(_) => ApiError::not_found(msg),
            RaError::Unauthenticated => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", msg)
            }
            RaError::ClientCertificateInvalid(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "client_certificate_invalid", msg)
            }
            RaError::ClientCertificateUnmapped => {
                ApiError::new(StatusCode::FORBIDDEN, "client_certificate_unmapped", msg)
            }
            RaError::TokenExpired => ApiError::new(StatusCode::UNAUTHORIZED, "token_expired", msg),
            RaError::RateLimited { retry_after_secs } => ApiError {
                retry_after: Some(retry_after_secs.max(1) as u64),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", msg)
            },
            RaError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg),
            RaError::TellerNeedsApproval => {
                ApiError::new(StatusCode::FORBIDDEN, "teller_requires_approval", msg)
            }
            RaError::SelfApproval => ApiError::new(StatusCode::FORBIDDEN, "self_approval", msg),
            RaError::HolderUnknown => ApiError::new(StatusCode::FORBIDDEN, "holder_unknown", msg),
            RaError::RequestExpired => ApiError::new(StatusCode::CONFLICT, "request_expired", msg),
            RaError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            RaError::HsmKeyProfile { .. } => ApiError::bad_request("profile_needs_hsm_key", msg),
            RaError::IssuedNotRecorded { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "issued_not_recorded",
                msg,
            ),
            RaError::Store(s) => from_store(&s),
            RaError::Ca(c) => c.into(),
        }
    }
}
