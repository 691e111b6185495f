//! The OCSP responder core (RFC 6960): answers a DER OCSPRequest with a DER OCSPResponse,
//! signed in the HSM by the CA that issued the certificates asked about (no delegated responder
//! certificate). Knows nothing of HTTP: the API layer passes the request body (POST) or the
//! decoded URL path (GET) and serves `der` as `application/ocsp-response`.
//!
//! Answers are never errors: bad input gets malformedRequest, an issuer that is not Signet's
//! (or a request mixing issuers) unauthorized, an HSM that is down tryLater, anything else that
//! fails internalError. Those four carry no responseBytes (RFC 6960 4.2.1).

pub mod asn1;
mod request;

pub use request::{
    names_issuer, parse_request, store_serial, Malformed, ParsedRequest, MAX_NONCE_LEN,
    MAX_REQUEST_LEN,
};

use der::asn1::{Null, OctetString};
use der::Encode;

use self::asn1::{
    BasicOcspResponse, CertId, CertStatus, OcspResponse, OcspResponseStatus, ResponderId,
    ResponseBytes, ResponseData, RevokedInfo, SingleResponse, Version, ID_PKIX_OCSP_BASIC,
};
use super::x509;
use std::sync::Arc;

use super::{crl_reason, Authority, CaCert, CaError, IssuerId};
use crate::store::{CertRecord, CertStatus as StoreStatus, RevocationRecord};

/// The responseStatus of an answer (sigRequired is never sent: requests need no signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspOutcome {
    Successful,
    MalformedRequest,
    InternalError,
    TryLater,
    Unauthorized,
}

impl OcspOutcome {
    fn status(self) -> OcspResponseStatus {
        match self {
            OcspOutcome::Successful => OcspResponseStatus::Successful,
            OcspOutcome::MalformedRequest => OcspResponseStatus::MalformedRequest,
            OcspOutcome::InternalError => OcspResponseStatus::InternalError,
            OcspOutcome::TryLater => OcspResponseStatus::TryLater,
            OcspOutcome::Unauthorized => OcspResponseStatus::Unauthorized,
        }
    }

    /// The RFC 6960 name (`malformedRequest`, ...).
    pub fn name(self) -> &'static str {
        match self {
            OcspOutcome::Successful => "successful",
            OcspOutcome::MalformedRequest => "malformedRequest",
            OcspOutcome::InternalError => "internalError",
            OcspOutcome::TryLater => "tryLater",
            OcspOutcome::Unauthorized => "unauthorized",
        }
    }
}

/// A DER OCSPResponse and what it says, for the caller's HTTP caching and metrics.
#[derive(Debug, Clone)]
pub struct OcspAnswer {
    /// The OCSPResponse, DER.
    pub der: Vec<u8>,
    pub status: OcspOutcome,
    /// The request's nonce is echoed in the response.
    pub has_nonce: bool,
    /// thisUpdate of the single responses (Unix seconds), for a successful answer.
    pub this_update: Option<i64>,
    /// nextUpdate of the single responses (Unix seconds), for a successful answer.
    pub next_update: Option<i64>,
}

impl OcspAnswer {
    /// An unsuccessful answer: responseStatus only.
    fn failure(status: OcspOutcome) -> Self {
        OcspAnswer {
            der: failure_response(status),
            status,
            has_nonce: false,
            this_update: None,
            next_update: None,
        }
    }
}

/// The DER of an unsuccessful OCSPResponse: responseStatus only, the five bytes
/// `30 03 0a 01 <status>`. A successful response needs a signed body, so `Successful` gives
/// internalError here.
pub fn failure_response(status: OcspOutcome) -> Vec<u8> {
    let status = match status {
        OcspOutcome::Successful => OcspOutcome::InternalError,
        other => other,
    };
    OcspResponse {
        response_status: status.status(),
        response_bytes: None,
    }
    .to_der()
    .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, status.status() as u8])
}

impl Authority {
    /// Answers one DER OCSP request. Never panics, never errors: bad input gets the RFC 6960
    /// malformedRequest response, store/HSM trouble gets tryLater (HSM) / internalError.
    pub fn ocsp_respond(&self, request_der: &[u8]) -> OcspAnswer {
        let parsed = match request::parse_request(request_der) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(reason = %e, "OCSP request is malformed");
                return OcspAnswer::failure(OcspOutcome::MalformedRequest);
            }
        };
        let Some(ca) = self.ocsp_issuer(&parsed.cert_ids) else {
            tracing::debug!("OCSP request names an issuer that is not ours, or several");
            return OcspAnswer::failure(OcspOutcome::Unauthorized);
        };
        match self.ocsp_signed_response(&ca, &parsed) {
            Ok(answer) => answer,
            Err(e) => {
                let outcome = failure_outcome(&e);
                tracing::warn!(error = %e, "OCSP: answering {}", outcome.name());
                OcspAnswer::failure(outcome)
            }
        }
    }

    /// The one CA that every CertID of the request names; `None` when one names no CA of ours
    /// or two name different CAs (RFC 6960 allows unauthorized for both: a response is signed
    /// by a single CA key here).
    fn ocsp_issuer(&self, cert_ids: &[CertId]) -> Option<Arc<CaCert>> {
        let cas: Vec<Arc<CaCert>> = IssuerId::ALL
            .into_iter()
            .filter_map(|id| self.ca(id).ok())
            .collect();
        let mut found: Option<&Arc<CaCert>> = None;
        for id in cert_ids {
            let ca = cas
                .iter()
                .find(|ca| request::names_issuer(id, &ca.certificate))?;
            match found {
                Some(f) if f.id != ca.id => return None,
                _ => found = Some(ca),
            }
        }
        found.cloned()
    }

    fn ocsp_signed_response(
        &self,
        ca: &CaCert,
        parsed: &ParsedRequest,
    ) -> Result<OcspAnswer, CaError> {
        let now = self.clock.now();
        let next_update = now + i64::from(self.settings.crl_next_update_hours) * 3600;
        let mut responses = Vec::with_capacity(parsed.cert_ids.len());
        for cert_id in &parsed.cert_ids {
            let record = match request::store_serial(cert_id) {
                Some(serial) => self.store.certificate(&serial)?.map(Known::from),
                None => None,
            };
            responses.push(SingleResponse {
                // Echoed as asked, so that the client matches it with its request.
                cert_id: cert_id.clone(),
                cert_status: cert_status(ca.id, record)?,
                this_update: x509::generalized_time(now)?,
                next_update: Some(x509::generalized_time(next_update)?),
                single_extensions: None,
            });
        }
        let tbs = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(OctetString::new(request::responder_key_hash(
                &ca.certificate,
            ))?),
            produced_at: x509::generalized_time(now)?,
            responses,
            response_extensions: parsed.nonce.clone().map(|n| vec![n]),
        };
        let sig = self.sign(&ca.key_label, &tbs.to_der()?)?;
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: x509::ecdsa_sha256(),
            signature: x509::signature_bits(&sig)?,
            // The issuing CA signs: the client already has its certificate (RFC 6960 4.2.2.2).
            certs: None,
        };
        let der = OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: ID_PKIX_OCSP_BASIC,
                response: OctetString::new(basic.to_der()?)?,
            }),
        }
        .to_der()?;
        Ok(OcspAnswer {
            der,
            status: OcspOutcome::Successful,
            has_nonce: parsed.nonce.is_some(),
            this_update: Some(now),
            next_update: Some(next_update),
        })
    }
}

/// How a failure to answer is told to the client: tryLater while the HSM is down (the service
/// recovers by itself), internalError for anything else (store trouble included).
fn failure_outcome(e: &CaError) -> OcspOutcome {
    match e {
        CaError::Hsm(h) if h.is_unavailable() => OcspOutcome::TryLater,
        _ => OcspOutcome::InternalError,
    }
}

/// What the responder reads of a certificate's store record.
#[derive(Debug, Clone, Copy)]
struct Known {
    issuer: IssuerId,
    status: StoreStatus,
    revocation: Option<RevocationRecord>,
    created_at: i64,
}

impl From<CertRecord> for Known {
    fn from(r: CertRecord) -> Self {
        Known {
            issuer: r.issuer,
            status: r.status,
            revocation: r.revocation,
            created_at: r.created_at,
        }
    }
}

/// The status of one certificate of `issuer` from its store record.
fn cert_status(issuer: IssuerId, record: Option<Known>) -> Result<CertStatus, CaError> {
    let Some(rec) = record.filter(|r| r.issuer == issuer) else {
        return Ok(CertStatus::Unknown(Null));
    };
    Ok(match (rec.status, rec.revocation) {
        // Recorded, not (yet) signed: nothing to vouch for.
        (StoreStatus::Pending, _) => CertStatus::Unknown(Null),
        (StoreStatus::Issued, None) => CertStatus::Good(Null),
        (StoreStatus::Issued, Some(r)) => CertStatus::Revoked(RevokedInfo {
            revocation_time: x509::generalized_time(r.revoked_at)?,
            revocation_reason: r.reason_code.map(crl_reason).transpose()?,
        }),
        // Voided interruption: it may have been signed but was never handed out; listed on the
        // CRL without a reason, so revoked without a reason here too.
        (StoreStatus::Void, r) => CertStatus::Revoked(RevokedInfo {
            revocation_time: x509::generalized_time(r.map_or(rec.created_at, |r| r.revoked_at))?,
            revocation_reason: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;
    use x509_cert::ext::pkix::CrlReason;
    use x509_cert::ext::Extension;

    use crate::ca::ocsp::asn1::ID_PKIX_OCSP_NONCE;

    const REQ_SHA1: &[u8] = include_bytes!("../../../tests/data/ocsp/req-sha1.der");

    #[test]
    fn failure_responses_carry_only_the_status() {
        for (outcome, code) in [
            (OcspOutcome::MalformedRequest, 1u8),
            (OcspOutcome::InternalError, 2),
            (OcspOutcome::TryLater, 3),
            (OcspOutcome::Unauthorized, 6),
        ] {
            let a = OcspAnswer::failure(outcome);
            assert_eq!(a.der, [0x30, 0x03, 0x0a, 0x01, code], "{}", outcome.name());
            let decoded = OcspResponse::from_der(&a.der).unwrap();
            assert_eq!(decoded.response_status, outcome.status());
            assert!(decoded.response_bytes.is_none());
            assert!(!a.has_nonce && a.next_update.is_none());
        }
    }

    #[test]
    fn an_hsm_outage_is_try_later_and_other_failures_internal_error() {
        use crate::hsm::HsmError;
        use crate::store::StoreError;
        let down = CaError::Hsm(HsmError::Unavailable {
            token: "t".into(),
            reason: "re-initializing".into(),
        });
        assert_eq!(failure_outcome(&down), OcspOutcome::TryLater);
        let no_key = CaError::Hsm(HsmError::KeyNotFound {
            token: "t".into(),
            key: "k".into(),
        });
        assert_eq!(failure_outcome(&no_key), OcspOutcome::InternalError);
        let store = CaError::Store(StoreError::Unavailable("disk full".into()));
        assert_eq!(failure_outcome(&store), OcspOutcome::InternalError);
        assert_eq!(
            failure_outcome(&CaError::Encoding("x".into())),
            OcspOutcome::InternalError
        );
    }

    fn record(
        issuer: IssuerId,
        status: StoreStatus,
        revocation: Option<RevocationRecord>,
    ) -> Known {
        Known {
            issuer,
            status,
            revocation,
            created_at: 1_700_000_000,
        }
    }

    fn revoked(at: i64, code: Option<u8>) -> Option<RevocationRecord> {
        Some(RevocationRecord {
            revoked_at: at,
            reason_code: code,
            invalidity_date: None,
        })
    }

    #[test]
    fn store_records_map_to_good_revoked_or_unknown() {
        use IssuerId::{Customer, Teller};
        let t = 1_750_000_000;
        let gt = x509::generalized_time(t).unwrap();
        let status = |r: Option<Known>| cert_status(Customer, r).unwrap();
        assert_eq!(status(None), CertStatus::Unknown(Null));
        assert_eq!(
            status(Some(record(Customer, StoreStatus::Issued, None))),
            CertStatus::Good(Null)
        );
        assert_eq!(
            status(Some(record(Teller, StoreStatus::Issued, None))),
            CertStatus::Unknown(Null),
            "a serial of another issuer"
        );
        assert_eq!(
            status(Some(record(Customer, StoreStatus::Pending, None))),
            CertStatus::Unknown(Null)
        );
        assert_eq!(
            status(Some(record(
                Customer,
                StoreStatus::Issued,
                revoked(t, Some(1))
            ))),
            CertStatus::Revoked(RevokedInfo {
                revocation_time: gt,
                revocation_reason: Some(CrlReason::KeyCompromise)
            })
        );
        assert_eq!(
            status(Some(record(
                Customer,
                StoreStatus::Issued,
                revoked(t, Some(6))
            ))),
            CertStatus::Revoked(RevokedInfo {
                revocation_time: gt,
                revocation_reason: Some(CrlReason::CertificateHold)
            })
        );
        assert_eq!(
            status(Some(record(
                Customer,
                StoreStatus::Issued,
                revoked(t, None)
            ))),
            CertStatus::Revoked(RevokedInfo {
                revocation_time: gt,
                revocation_reason: None
            }),
            "unspecified: no reason"
        );
        assert_eq!(
            status(Some(record(Customer, StoreStatus::Void, revoked(t, None)))),
            CertStatus::Revoked(RevokedInfo {
                revocation_time: gt,
                revocation_reason: None
            })
        );
        assert!(
            cert_status(
                Customer,
                Some(record(Customer, StoreStatus::Issued, revoked(t, Some(7))))
            )
            .is_err(),
            "reason code 7 does not exist"
        );
    }

    #[test]
    fn an_encoded_response_round_trips() {
        let cert_id = request::parse_request(REQ_SHA1).unwrap().cert_ids.remove(0);
        let at = x509::generalized_time(1_750_000_000).unwrap();
        let next = x509::generalized_time(1_750_086_400).unwrap();
        let nonce = Extension {
            extn_id: ID_PKIX_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(vec![0x04, 0x02, 0xab, 0xcd]).unwrap(),
        };
        let statuses = [
            CertStatus::Good(Null),
            CertStatus::Revoked(RevokedInfo {
                revocation_time: at,
                revocation_reason: Some(CrlReason::CertificateHold),
            }),
            CertStatus::Revoked(RevokedInfo {
                revocation_time: at,
                revocation_reason: None,
            }),
            CertStatus::Unknown(Null),
        ];
        let tbs = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(OctetString::new(vec![0x11; 20]).unwrap()),
            produced_at: at,
            responses: statuses
                .iter()
                .map(|s| SingleResponse {
                    cert_id: cert_id.clone(),
                    cert_status: s.clone(),
                    this_update: at,
                    next_update: Some(next),
                    single_extensions: None,
                })
                .collect(),
            response_extensions: Some(vec![nonce]),
        };
        let tbs_der = tbs.to_der().unwrap();
        // DER: the DEFAULT version is absent, so responderID ([2] byKey) comes first.
        assert_eq!(tbs_der[..2], [0x30, 0x82], "two length octets");
        assert_eq!(tbs_der[4], 0xa2, "{}", hex::encode(&tbs_der));
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: x509::ecdsa_sha256(),
            signature: x509::signature_bits(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01])
                .unwrap(),
            certs: None,
        };
        let response = OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: ID_PKIX_OCSP_BASIC,
                response: OctetString::new(basic.to_der().unwrap()).unwrap(),
            }),
        };
        let der = response.to_der().unwrap();
        let decoded = OcspResponse::from_der(&der).unwrap();
        assert_eq!(decoded, response);
        let bytes = decoded.response_bytes.unwrap();
        assert_eq!(bytes.response_type, ID_PKIX_OCSP_BASIC);
        let decoded_basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
        assert_eq!(decoded_basic, basic);
        let got: Vec<_> = decoded_basic
            .tbs_response_data
            .responses
            .iter()
            .map(|r| r.cert_status.clone())
            .collect();
        assert_eq!(got, statuses);
        // The CertID comes back byte for byte as the request had it.
        assert_eq!(
            decoded_basic.tbs_response_data.responses[0]
                .cert_id
                .to_der()
                .unwrap(),
            cert_id.to_der().unwrap()
        );
        assert!(REQ_SHA1
            .windows(cert_id.to_der().unwrap().len())
            .any(|w| w == cert_id.to_der().unwrap().as_slice()));
    }
}
