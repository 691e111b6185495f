//! The OpenAPI 3 document of the /v1 routes, built from one table that tests compare with the
//! router.

use axum::Json;
use serde_json::{json, Value};

/// One documented route.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub role: &'static str,
    /// Name of the request body's schema.
    pub body: Option<&'static str>,
    /// Status of success.
    pub status: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    role: &'static str,
    body: Option<&'static str>,
    status: &'static str,
) -> Route {
    Route {
        method,
        path,
        summary,
        role,
        body,
        status,
    }
}

/// Every /v1 route.
pub const V1_ROUTES: &[Route] = &[
    route("post", "/v1/tellers", "Register a teller of the bank", "teller-admin", Some("TellerRequestBody"), "201"),
    route("post", "/v1/teller-keys", "Ask for an HSM-held key for a teller (a second teller-admin approves)", "teller-admin", Some("TellerKeyRequest"), "202"),
    route("get", "/v1/signing-keys", "The caller's usable signing keys", "sealer, teller", None, "200"),
    route("post", "/v1/signing-keys/{id}/pin", "Set the key's PIN (activation code) or change it (old PIN)", "teller", Some("PinRequest"), "204"),
    route("post", "/v1/signing-keys/{id}/unlock", "Unlock a key locked by wrong PINs", "teller-admin", None, "204"),
    route("post", "/v1/signatures", "Sign data (any format) or a batch of SHA-256 hashes (cms-detached)", "sealer, teller (with PIN)", Some("SignatureRequest"), "200"),
    route(
        "post",
        "/v1/verifications",
        "Verify a signed payment instruction (CMS or JWS): ETSI verdict, article 13 section, optional signed receipt",
        "gateway",
        Some("VerificationRequest"),
        "200",
    ),
    route(
        "post",
        "/v1/verifications/batch",
        "Verify up to 64 signed payment instructions in one request: each its own report, replay guard, audit event and optional receipt",
        "gateway",
        Some("VerificationBatchRequest"),
        "200",
    ),
    route(
        "post",
        "/v1/verifications/certificate",
        "Validate a certificate alone",
        "gateway",
        Some("CertificateValidationRequest"),
        "200",
    ),
    route(
        "post",
        "/v1/certificates",
        "Issue a customer certificate from a CSR and vetted subject",
        "ra-officer",
        Some("CertificateRequest"),
        "201",
    ),
    route(
        "post",
        "/v1/certificates/batch",
        "Issue up to 64 customer certificates in one request: each checked and issued on its own, answered in order",
        "ra-officer",
        Some("CertificateBatchRequest"),
        "200",
    ),
    route(
        "post",
        "/v1/certificates/search",
        "Find the bank's certificates by the subject's ID number",
        "ra-officer, teller-admin, auditor",
        Some("SearchRequest"),
        "200",
    ),
    route(
        "get",
        "/v1/certificates/{serial}",
        "One of the bank's certificates",
        "ra-officer, teller-admin, auditor",
        None,
        "200",
    ),
    route(
        "post",
        "/v1/certificates/{serial}/revoke",
        "Revoke one of the bank's certificates",
        "ra-officer (customer), teller-admin (teller)",
        Some("RevokeRequest"),
        "200",
    ),
    route(
        "post",
        "/v1/certificates/{serial}/hold",
        "Put a teller certificate on hold",
        "teller-admin",
        None,
        "200",
    ),
    route(
        "post",
        "/v1/certificates/{serial}/release",
        "Release a teller certificate from hold",
        "teller-admin",
        None,
        "200",
    ),
    route(
        "post",
        "/v1/teller-requests",
        "File a teller certificate request (a second teller-admin approves)",
        "teller-admin",
        Some("TellerRequest"),
        "202",
    ),
    route(
        "post",
        "/v1/teller-requests/{id}/approve",
        "Approve another person's teller request (certificate or HSM key): a credential cannot approve its own request, nor one filed by a credential of the same holder (403 self_approval), nor one where only one of the two credentials names a holder (403 holder_unknown)",
        "teller-admin",
        None,
        "201",
    ),
    route(
        "post",
        "/v1/teller-requests/{id}/reject",
        "Reject a pending teller request, saying why (no control characters, no run of 15 digits or more: no national ID number): any teller-admin of the bank, its filer included (withdrawing it); it can no longer be approved. Approving a key request for a teller who already has a key rejects it too (409)",
        "teller-admin",
        Some("RejectRequest"),
        "200",
    ),
    route(
        "get",
        "/v1/teller-requests",
        "The bank's teller requests, newest first; `status` (pending, approved, expired, rejected) and `limit` (1-1000, default 100) in the query. A pending request past its expiry is expired",
        "teller-admin, auditor",
        None,
        "200",
    ),
    route(
        "get",
        "/v1/teller-requests/{id}",
        "One of the bank's teller requests: status, who filed and decided it, why it was rejected, the serial issued",
        "teller-admin, auditor",
        None,
        "200",
    ),
    route(
        "get",
        "/v1/audit-events",
        "The bank's audit events after `since`, in order, with chain hashes",
        "auditor",
        None,
        "200",
    ),
    route("get", "/v1/ca", "The CA chain, PEM", "anyone", None, "200"),
];

fn schemas() -> Value {
    json!({
        "CertificateRequest": {
            "type": "object", "required": ["profile", "csr", "subject"], "additionalProperties": false,
            "properties": {
                "profile": {"type": "string", "example": "customer"},
                "csr": {"type": "string", "description": "PKCS#10, PEM"},
                "subject": {"type": "string", "description": "vetted subject, RFC 4514", "example": "CN=Zhang San,serialNumber=110101199003071234"}
            }
        },
        "TellerRequest": {
            "type": "object", "required": ["csr", "subject"], "additionalProperties": false,
            "properties": {"csr": {"type": "string"}, "subject": {"type": "string", "example": "CN=Li Si,serialNumber=E1024,OU=Branch 12"}}
        },
        "RejectRequest": {
            "type": "object", "required": ["reason"], "additionalProperties": false,
            "properties": {"reason": {"type": "string", "maxLength": 500, "example": "the subject's branch is wrong"}}
        },
        "SearchRequest": {
            "type": "object", "required": ["subject_serial"], "additionalProperties": false,
            "properties": {"subject_serial": {"type": "string", "description": "the subject's ID number (never put in a URL)"}}
        },
        "RevokeRequest": {
            "type": "object", "required": ["reason"], "additionalProperties": false,
            "properties": {
                "reason": {"type": "string", "enum": ["unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded", "cessationOfOperation", "privilegeWithdrawn"]},
                "invalidity_date": {"type": "string", "example": "2026-11-01T00:00:00Z"}
            }
        },
        "VerificationRequest": {
            "type": "object", "required": ["instruction", "signature"], "additionalProperties": false,
            "properties": {
                "instruction": {"type": "string", "description": "the instruction bytes, base64"},
                "signature": {"type": "string", "description": "CMS SignedData as base64 DER or PEM, or a JWS (compact or JSON)"},
                "receipt": {"type": "boolean", "default": false, "description": "add a CMS receipt signed by Signet over the report (RFC 8785)"}
            }
        },
        "CertificateBatchRequest": {
            "type": "object", "required": ["items"], "additionalProperties": false,
            "properties": {
                "items": {"type": "array", "minItems": 1, "maxItems": 64, "items": {"$ref": "#/components/schemas/CertificateRequest"},
                          "description": "answered in order as {\"results\": [...]}: each {serial, issuer, certificate, chain}, or {\"error\": {code, message}} with the code POST /v1/certificates would give"}
            }
        },
        "VerificationBatchRequest": {
            "type": "object", "required": ["items"], "additionalProperties": false,
            "properties": {
                "items": {"type": "array", "minItems": 1, "maxItems": 64, "items": {"$ref": "#/components/schemas/VerificationRequest"},
                          "description": "answered in order as {\"results\": [...]}: each a report (with its receipt if asked for), or {\"error\": {code, message}} if its record could not be written (retry that one)"}
            }
        },
        "CertificateValidationRequest": {
            "type": "object", "required": ["certificate"], "additionalProperties": false,
            "properties": {"certificate": {"type": "string", "description": "PEM, or base64 DER"}}
        },
        "TellerRequestBody": {
            "type": "object", "required": ["employee_id", "name"], "additionalProperties": false,
            "properties": {"employee_id": {"type": "string"}, "name": {"type": "string"}}
        },
        "TellerKeyRequest": {
            "type": "object", "required": ["employee_id"], "additionalProperties": false,
            "properties": {"employee_id": {"type": "string"}}
        },
        "PinRequest": {
            "type": "object", "required": ["new_pin"], "additionalProperties": false,
            "properties": {"activation_code": {"type": "string"}, "old_pin": {"type": "string"}, "new_pin": {"type": "string"}}
        },
        "SignatureRequest": {
            "type": "object", "required": ["key", "format"], "additionalProperties": false,
            "properties": {
                "key": {"type": "string"},
                "format": {"type": "string", "enum": ["cms-detached", "cms-attached", "jws"]},
                "data": {"type": "string", "description": "base64"},
                "hashes": {"type": "array", "maxItems": 1000, "items": {"type": "string", "description": "base64 SHA-256"}},
                "pin": {"type": "string", "description": "required for teller keys"}
            }
        },
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}
        }
    })
}

/// The document.
pub fn build() -> Value {
    let mut paths = serde_json::Map::new();
    for Route {
        method,
        path,
        summary,
        role,
        body,
        status,
    } in V1_ROUTES
    {
        let mut op = json!({
            "summary": summary,
            "description": format!("Role: {role}."),
            "responses": {
                *status: {"description": "success"},
                "400": {"description": "bad request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "401": {"description": "missing, bad or expired bearer token (unauthenticated, token_expired), or a client certificate that does not verify (client_certificate_invalid)"},
                "403": {"description": "the role may not do this, or the client certificate is not mapped (client_certificate_unmapped)"},
                "404": {"description": "not found (or another bank's)"},
                "429": {"description": "too many failed authentications from this address or for this credential (code rate_limited); see Retry-After"},
                "503": {"description": "HSM or store unavailable; retry"}
            }
        });
        if path.contains('{') {
            let params: Vec<Value> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
                .collect();
            op["parameters"] = Value::Array(params);
        }
        if let Some(schema) = body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        if *role != "anyone" {
            op["security"] = json!([{"bearer": []}]);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Signet", "version": env!("CARGO_PKG_VERSION"),
                 "description": "HSM-backed certificate authority for banks. Errors are {\"error\":{\"code\",\"message\"}}."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
