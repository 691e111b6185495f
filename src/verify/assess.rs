//! From a signer's evidence to its verdict: certificate found, cryptography, algorithm policy,
//! path, accepted policy and key usage, time, revocation, replay — in that order, the first
//! failure deciding the sub-indication.

use std::borrow::Cow;
use std::sync::Arc;

use der::Encode;
use sha2::{Digest, Sha256};
use x509_cert::ext::pkix::KeyUsages;
use x509_cert::Certificate;

use super::certs::{serial_hex, CertCache, KnownCert};
use super::evidence::{
    CertificateResolver, Crypto, DigestAlg, SignatureFormat, SignerEvidence, SignerRef,
};
use super::path::{self, Anchor, PathError, ValidPath};
use super::report::{
    rfc3339, Check, Condition, ElectronicSignatureLaw, Indication, Replay, Report, SignerReport,
    SignerSummary, SubIndication,
};
use super::{cms, input, jws, VerifyError};
use crate::audit::{AuditEvent, AuditRecord, BackgroundCheckpoints};
use crate::ca::{Authority, IssuerId, HOLD_REASON_CODE};
use crate::clock::Clock;
use crate::policy::{KeyCustody, KeyType, KeyUsageBit, PolicyDigest, Profiles, SignaturePolicy};
use crate::store::{
    Applied, CertStatus, GroupCommit, GroupedWrite, ReplayKeys, Store, VerificationEvent, WriteUnit,
};

/// Certificates a signature carries that path building looks at.
const MAX_CARRIED_CERTIFICATES: usize = 10;
/// Certificate signatures remembered (customer certificates and their CAs): 32 bytes each.
const SIGNATURE_CACHE_ENTRIES: usize = 100_000;
/// Decoded certificates kept (about 3 KiB each with their names: a few MiB at most).
const CERTIFICATE_CACHE_ENTRIES: usize = 2_000;
/// Validated paths kept (a handful of certificates each, shared with the certificate cache
/// only by content).
const PATH_CACHE_ENTRIES: usize = 2_000;
/// Replay-guard keys are kept this many replay windows. After one a key makes no replay (the
/// guard takes it as unseen); the second lets an operator double the window without losing
/// sightings the longer window should still catch.
const REPLAY_KEY_WINDOWS: i64 = 2;
/// Most replay-guard keys of each kind forgotten in one transaction: the store's writer is
/// held for milliseconds, and verifications commit between two of them.
const REPLAY_KEYS_FORGOTTEN_AT_ONCE: u32 = 5_000;

/// Verifies signatures of payment instructions.
pub struct Verifier {
    store: Arc<dyn Store>,
    clock: Clock,
    policy: SignaturePolicy,
    profiles: Profiles,
    anchors: Vec<Anchor>,
    intermediates: Vec<Certificate>,
    /// Certificate signatures of chains already validated (see `path::SignatureCache`).
    signatures: path::SignatureCache,
    /// Certificates already decoded (see `certs`).
    certificates: CertCache,
    /// Paths already validated (see `path::PathCache`).
    paths: path::PathCache,
    /// The authority's group committer: verification records share its transactions.
    commits: GroupCommit,
    /// Checkpoints the audit chain when a verification's event is due for one.
    checkpoints: BackgroundCheckpoints,
}

/// A verdict in progress: the first failure wins.
struct Verdict {
    failure: Option<(Indication, SubIndication)>,
    checks: Vec<Check>,
}

impl Verdict {
    fn check(&mut self, name: &'static str, passed: bool, detail: impl Into<Cow<'static, str>>) {
        self.checks.push(Check::new(name, passed, detail));
    }

    fn fail(
        &mut self,
        indication: Indication,
        sub: SubIndication,
        name: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) {
        self.check(name, false, detail);
        if self.failure.is_none() {
            self.failure = Some((indication, sub));
        }
    }

    fn failed(&self) -> bool {
        self.failure.is_some()
    }
}

impl CertificateResolver for Verifier {
    fn resolve(&self, signer: &SignerRef) -> Option<Arc<KnownCert>> {
        let rec = match signer {
            SignerRef::IssuerSerial { serial, .. } => self.store.certificate(serial).ok()?,
            SignerRef::SubjectKeyId(id) => {
                self.store.certificate_by_key_id(&hex::encode(id)).ok()?
            }
            SignerRef::Thumbprint(t) => {
                self.store.certificate_by_thumbprint(&hex::encode(t)).ok()?
            }
            SignerRef::None => None,
        }?;
        // Only what Signet issued, whichever way the signer is named.
        if rec.status != CertStatus::Issued {
            return None;
        }
        let cert = self
            .certificates
            .get_or_parse(rec.cert_der.as_deref()?)
            .ok()?;
        match signer {
            // A serial names a certificate only together with its issuer.
            SignerRef::IssuerSerial { issuer_der, .. } => {
                (cert.issuer_der() == Some(issuer_der.as_slice())).then_some(cert)
            }
            _ => Some(cert),
        }
    }

    fn certificate(&self, der: &[u8]) -> Result<Arc<KnownCert>, der::Error> {
        self.certificates.get_or_parse(der)
    }
}

fn digest_name(d: &DigestAlg) -> String {
    match d {
        DigestAlg::Other(s) => s.clone(),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
    }
}

fn policy_digest(d: &DigestAlg) -> Option<PolicyDigest> {
    match d {
        DigestAlg::Sha256 => Some(PolicyDigest::Sha256),
        DigestAlg::Sha384 => Some(PolicyDigest::Sha384),
        DigestAlg::Sha512 => Some(PolicyDigest::Sha512),
        _ => None,
    }
}

/// Revocation status of a certificate as Signet or the anchor's CRL knows it.
enum Status {
    Good,
    /// Revoked (or voided) at this time, with its RFC 5280 reason code.
    Revoked {
        at: i64,
        reason: Option<u8>,
        /// The CA of the path that is revoked, when it is not the signer's certificate.
        ca: Option<String>,
    },
    OnHold {
        since: i64,
        ca: Option<String>,
    },
    Unknown(String),
    /// The serial is Signet's but the certificate presented is not the one it issued with
    /// it: only Signet's CA key could have signed it, outside Signet's records.
    NotIssued(String),
}

/// The start of a status's detail when it is a CA's of the path, not the signer's.
fn whose(ca: &Option<String>) -> String {
    ca.as_ref()
        .map_or_else(String::new, |name| format!("the path's CA {name} is "))
}

impl Verifier {
    /// A verifier for `authority`'s hierarchy and any `extra` anchors.
    pub fn new(
        authority: &Authority,
        profiles: Profiles,
        policy: SignaturePolicy,
        extra: Vec<Anchor>,
    ) -> Result<Self, VerifyError> {
        let ca = |id| {
            authority
                .ca(id)
                .map(|c| c.certificate.clone())
                .map_err(|e| VerifyError::Setup(e.to_string()))
        };
        let mut anchors = vec![Anchor {
            certificate: ca(IssuerId::Root)?,
            own: true,
            crl: None,
            name: "signet-root".into(),
        }];
        anchors.extend(extra);
        Ok(Verifier {
            store: authority.store().clone(),
            clock: authority.clock().clone(),
            policy,
            profiles,
            anchors,
            intermediates: vec![ca(IssuerId::Customer)?, ca(IssuerId::Teller)?],
            signatures: path::SignatureCache::new(SIGNATURE_CACHE_ENTRIES),
            certificates: CertCache::new(CERTIFICATE_CACHE_ENTRIES),
            paths: path::PathCache::new(PATH_CACHE_ENTRIES),
            commits: authority.commits().clone(),
            checkpoints: BackgroundCheckpoints::start(authority.auditor().clone()).map_err(
                |e| VerifyError::Setup(format!("cannot start the audit checkpoint thread: {e}")),
            )?,
        })
    }

    pub fn policy(&self) -> &SignaturePolicy {
        &self.policy
    }

    /// Has the audit chain checkpointed when `audit` is due for one (every
    /// `[audit].checkpoint_every` events), as every other writer of the chain does: on the
    /// checkpoint thread, so that a verification never waits for the HSM. Its event is committed
    /// and chained already; a checkpoint that fails is tried again at the next due event and at
    /// shutdown.
    fn checkpoint_if_due(&self, audit: &AuditRecord) {
        self.checkpoints.after_append(audit);
    }

    /// Forgets one transaction's worth of replay-guard keys first seen more than two replay
    /// windows ago, with an audit event that says how many and up to when. Returns how many
    /// went: 0 when none that old are left. Not evidence: each verification's own audit event
    /// keeps the instruction's digest.
    pub fn forget_expired_replay_keys(&self, actor: &str) -> Result<u64, VerifyError> {
        let now = self.clock.now();
        let seen_before = now.saturating_sub(
            self.policy
                .replay
                .window_secs
                .saturating_mul(REPLAY_KEY_WINDOWS),
        );
        let event = |keys: u64| {
            AuditEvent::new(
                actor,
                "replay.forget",
                "replay-guard",
                serde_json::json!({"first_seen_before": rfc3339(seen_before), "keys": keys}),
            )
        };
        let forgotten = self.store.forget_replay_keys(
            seen_before,
            REPLAY_KEYS_FORGOTTEN_AT_ONCE,
            now,
            &event,
        )?;
        Ok(forgotten.map_or(0, |(keys, audit)| {
            self.checkpoint_if_due(&audit);
            keys
        }))
    }

    /// Verifies `signature` over `instruction`. `actor`/`tenant` name the caller in the audit.
    pub fn verify(
        &self,
        instruction: &[u8],
        signature: &[u8],
        actor: &str,
        tenant: Option<&str>,
    ) -> Result<Report, VerifyError> {
        let presented = Presented {
            instruction,
            signature,
        };
        self.verify_batch(&[presented], actor, tenant)
            .pop()
            .unwrap_or_else(|| Err(VerifyError::Setup("no report was made".into())))
    }

    /// Verifies several instructions for one caller: each gets its own report, replay-guard
    /// keys and audit event, exactly as [`Verifier::verify`] would give it, in the order given
    /// (an instruction presented twice in one batch is a replay the second time). Their
    /// records are handed to the group committer together and share its transaction. An
    /// instruction whose record could not be written gets its own error; the others stand.
    pub fn verify_batch(
        &self,
        items: &[Presented<'_>],
        actor: &str,
        tenant: Option<&str>,
    ) -> Vec<Result<Report, VerifyError>> {
        let now = self.clock.now();
        let (decided, units): (Vec<Decided>, Vec<WriteUnit>) = items
            .iter()
            .map(|item| self.decide(item, now, actor, tenant))
            .unzip();
        let outcomes = self.commits.write_units(units);
        decided
            .into_iter()
            .zip(outcomes)
            .map(|(d, applied)| d.finish(self, now, applied))
            .collect()
    }

    /// Everything about one instruction but what its records answer (the replay guard): the
    /// decision so far, and its records as one unit (one write per signer, or one for a
    /// signature that cannot be read): all of them are kept, or none.
    fn decide(
        &self,
        item: &Presented<'_>,
        now: i64,
        actor: &str,
        tenant: Option<&str>,
    ) -> (Decided, WriteUnit) {
        let (evidence, digest) = match self.examine(item.instruction, item.signature) {
            Ok(examined) => examined,
            Err(reason) => {
                let digest = hex::encode(Sha256::digest(item.instruction));
                let report = Report::format_failure(
                    rfc3339(now),
                    digest.clone(),
                    self.policy.description.clone(),
                    &reason,
                );
                let event = AuditEvent::new(
                    actor,
                    "signature.verify",
                    &digest,
                    serde_json::json!({"indication": report.indication, "sub_indication": report.sub_indication}),
                )
                .for_tenant(tenant);
                let write = verification_write(None, now, 1, move |_| event.clone());
                return (Decided::Unreadable(Box::new(report)), vec![write]);
            }
        };
        let mut writes = Vec::with_capacity(evidence.len());
        // The instruction as signed: a signature that carries its content may come without it.
        let signed_instruction = match evidence.first().and_then(|e| e.attached_content.as_ref()) {
            Some(content) if item.instruction.is_empty() => &**content,
            _ => item.instruction,
        };
        let mut signers: Vec<Assessed> = evidence
            .iter()
            .map(|ev| {
                self.assess(
                    ev,
                    signed_instruction,
                    &digest,
                    now,
                    actor,
                    tenant,
                    &mut writes,
                )
            })
            .collect();
        // An instruction passes only with all its signers: while one fails, none is
        // remembered, so that the same instruction presented again once that is mended (a hold
        // released) is not taken for a replay of the first, failed presentation.
        if signers.iter().any(|s| s.verdict.failed()) {
            for (write, signer) in writes.iter_mut().zip(signers.iter_mut()) {
                if let GroupedWrite::Verification { guard, .. } = write {
                    *guard = None;
                }
                signer.guarded = false;
            }
        }
        let decided = Decided::Signers {
            evidence,
            digest,
            signers,
        };
        (decided, writes)
    }

    /// Reads the signature (CMS or JWS) and examines each signer; returns the evidence and the
    /// hex SHA-256 the report and the replay guard name, or why the signature cannot be read.
    /// An attached signature given with no separate instruction is named by the content it
    /// carries, not by the empty input.
    fn examine(
        &self,
        instruction: &[u8],
        signature: &[u8],
    ) -> Result<(Vec<SignerEvidence>, String), String> {
        let evidence = input::decode_signature(signature)
            .and_then(|input| match input {
                input::SignatureInput::Cms(der) => cms::examine_cms(&der, instruction, self),
                input::SignatureInput::Jws(text) => jws::examine_jws(&text, instruction, self),
            })
            .map_err(|e| e.to_string())?;
        let digest = match evidence.first() {
            None => return Err("the signature has no signer".into()),
            // Detached, the signed content is the instruction: its digest is already known.
            Some(ev) if instruction.is_empty() || ev.format == SignatureFormat::CmsDetached => {
                hex::encode(ev.content_sha256)
            }
            Some(_) => hex::encode(Sha256::digest(instruction)),
        };
        Ok((evidence, digest))
    }

    /// Validates a certificate alone (path, policy, status now).
    pub fn verify_certificate(
        &self,
        der: &[u8],
        actor: &str,
        tenant: Option<&str>,
    ) -> Result<Report, VerifyError> {
        let now = self.clock.now();
        let digest = hex::encode(Sha256::digest(der));
        let cert = match parse_certificate(der, &self.certificates) {
            Ok(c) => c,
            Err(reason) => {
                return Ok(Report::format_failure(
                    rfc3339(now),
                    digest,
                    self.policy.description.clone(),
                    &reason,
                ))
            }
        };
        let ev = SignerEvidence {
            format: SignatureFormat::CmsDetached,
            certificate: Some(cert),
            signer_ref: SignerRef::None,
            other_certificates: Vec::new(),
            digest: DigestAlg::Sha256,
            algorithm: super::evidence::SigAlg::Ecdsa,
            claimed_signing_time: None,
            signed_attributes: false,
            checks: Vec::new(),
            crypto: Crypto::Valid,
            content_sha256: Sha256::digest(der).into(),
            attached_content: None,
        };
        let mut v = Verdict {
            failure: None,
            checks: Vec::new(),
        };
        let summary = self.certificate_checks(
            &ev,
            ev.certificate.as_ref().expect("set above"),
            now,
            &mut v,
        );
        let (indication, sub_indication) = match v.failure {
            Some((i, s)) => (i, Some(s)),
            None => (Indication::TotalPassed, None),
        };
        let report = SignerReport {
            indication,
            sub_indication,
            signer: Some(summary.clone()),
            claimed_signing_time: None,
            electronic_signature_law: article13(&ev, Some(&summary), &v, false),
            checks: v.checks,
            replay: None,
        };
        let event = AuditEvent::new(
            actor,
            "certificate.validate",
            &summary.serial,
            serde_json::json!({"indication": report.indication, "sub_indication": report.sub_indication}),
        )
        .for_tenant(tenant);
        let applied = self
            .commits
            .write(verification_write(None, now, 1, move |_| event.clone()))?;
        self.checkpoint_if_due(&applied.audit);
        Ok(Report::combine(
            None,
            rfc3339(now),
            digest,
            self.policy.description.clone(),
            vec![report],
            Vec::new(),
        ))
    }

    /// The pure verification of `signature` over `instruction`: cryptography, certificate
    /// path, signature policy, time, and revocation status at the claimed signing time; nothing
    /// is written (no replay guard, no audit event). [`Verifier::verify`] is this plus the
    /// replay guard (with its refusal of an instruction that names its id twice) and the
    /// audit, which is what the API serves; this entry point is what the verification
    /// benchmark measures.
    pub fn verify_pure(&self, instruction: &[u8], signature: &[u8]) -> Report {
        let now = self.clock.now();
        let (evidence, digest) = match self.examine(instruction, signature) {
            Ok(examined) => examined,
            Err(reason) => {
                return Report::format_failure(
                    rfc3339(now),
                    hex::encode(Sha256::digest(instruction)),
                    self.policy.description.clone(),
                    &reason,
                )
            }
        };
        let format = evidence.first().map(|e| e.format);
        let signers = evidence
            .iter()
            .map(|ev| {
                let (v, summary) = self.judge(ev, now);
                signer_report(ev, v, summary, None)
            })
            .collect();
        Report::combine(
            format,
            rfc3339(now),
            digest,
            self.policy.description.clone(),
            signers,
            Vec::new(),
        )
    }

    /// Everything but the replay guard: certificate found, cryptography, algorithm policy,
    /// path, accepted policy, key usage, time, revocation.
    fn judge(&self, ev: &SignerEvidence, now: i64) -> (Verdict, Option<SignerSummary>) {
        let mut v = Verdict {
            failure: None,
            checks: ev
                .checks
                .iter()
                .map(|c| Check::new(c.name.clone(), c.passed, c.detail.clone()))
                .collect(),
        };
        use Indication::{Indeterminate, TotalFailed};
        let mut summary = None;
        // 1. A certificate to check with.
        match &ev.certificate {
            None => v.fail(
                Indeterminate,
                SubIndication::NoSigningCertificateFound,
                "signing-certificate",
                "the signature carries no signer certificate and none is on record for the signer it names",
            ),
            Some(_) => v.check("signing-certificate", true, "found"),
        }
        // 2. Cryptography.
        match &ev.crypto {
            Crypto::Valid => v.check(
                "signature",
                true,
                "the signature verifies and the content matches",
            ),
            Crypto::HashFailure => v.fail(
                TotalFailed,
                SubIndication::HashFailure,
                "message-digest",
                "the signed digest does not match the instruction",
            ),
            Crypto::SigCryptoFailure(why) => v.fail(
                TotalFailed,
                SubIndication::SigCryptoFailure,
                "signature",
                why.clone(),
            ),
            Crypto::AlgorithmNotSupported(what) => v.fail(
                Indeterminate,
                SubIndication::CryptoConstraintsFailure,
                "algorithm",
                format!("algorithm not supported: {what}"),
            ),
            Crypto::NotChecked => {}
        }
        // 3. The algorithm policy.
        match policy_digest(&ev.digest) {
            Some(d) if self.policy.digest_algorithms.contains(&d) => {
                v.check("digest-algorithm", true, digest_name(&ev.digest))
            }
            _ => v.fail(
                Indeterminate,
                SubIndication::CryptoConstraintsFailure,
                "digest-algorithm",
                format!(
                    "{} is not accepted by the signature policy",
                    digest_name(&ev.digest)
                ),
            ),
        }
        if let Some(cert) = &ev.certificate {
            summary = Some(self.certificate_checks(ev, cert, now, &mut v));
        }
        (v, summary)
    }

    /// One signer's verdict before the replay guard; its record (replay-guard keys and audit
    /// event) is appended to `writes`.
    #[allow(clippy::too_many_arguments)]
    fn assess(
        &self,
        ev: &SignerEvidence,
        instruction: &[u8],
        digest: &str,
        now: i64,
        actor: &str,
        tenant: Option<&str>,
        writes: &mut Vec<GroupedWrite>,
    ) -> Assessed {
        use Indication::Indeterminate;
        let (mut verdict, summary) = self.judge(ev, now);
        let instruction_id = match self.instruction_id(instruction) {
            Ok(id) => id,
            Err(why) => {
                verdict.fail(
                    Indeterminate,
                    SubIndication::SigConstraintsFailure,
                    "instruction-id",
                    why,
                );
                None
            }
        };
        // Replay: only a signature that is otherwise good is remembered.
        let keys = match (&ev.certificate, verdict.failed()) {
            (Some(cert), false) => Some(ReplayKeys {
                signer: hex::encode(Sha256::digest(
                    cert.cert
                        .tbs_certificate()
                        .subject_public_key_info()
                        .to_der()
                        .unwrap_or_default(),
                )),
                digest: hex::encode(ev.content_sha256),
                instruction_id,
            }),
            _ => None,
        };
        // One signer twice in one signature (two SignerInfos, two JWS signatures) is one
        // presentation: its second entry is not a replay of its first.
        let keys = keys.filter(|k| {
            !writes.iter().any(|w| {
                matches!(w, GroupedWrite::Verification { guard: Some(g), .. }
                    if g.signer == k.signer && g.digest == k.digest)
            })
        });
        let pre = verdict.failure;
        let serial = summary
            .as_ref()
            .map(|s| s.serial.clone())
            .unwrap_or_default();
        let reject = self.policy.replay.reject;
        let (actor_owned, digest_owned) = (actor.to_string(), digest.to_string());
        let tenant_owned = tenant.map(String::from);
        let guarded = keys.is_some();
        writes.push(verification_write(
            keys,
            now,
            self.policy.replay.window_secs,
            move |seen| {
                let verdict = match (pre, seen) {
                    (Some((i, s)), _) => (i, Some(s)),
                    (None, Some(_)) if reject => {
                        (Indeterminate, Some(SubIndication::SigConstraintsFailure))
                    }
                    (None, _) => (Indication::TotalPassed, None),
                };
                AuditEvent::new(
                    &actor_owned,
                    "signature.verify",
                    &digest_owned,
                    serde_json::json!({
                        "signer_serial": serial,
                        "indication": verdict.0,
                        "sub_indication": verdict.1,
                        "replay_first_seen": seen,
                    }),
                )
                .for_tenant(tenant_owned.as_deref())
            },
        ));
        Assessed {
            verdict,
            summary,
            guarded,
        }
    }

    /// Key, path, accepted policy, key usage, time and revocation of the signer's certificate.
    fn certificate_checks(
        &self,
        ev: &SignerEvidence,
        known: &KnownCert,
        now: i64,
        v: &mut Verdict,
    ) -> SignerSummary {
        use Indication::{Indeterminate, TotalFailed};
        let cert = &known.cert;
        let facts = known.facts();
        let spki = cert.tbs_certificate().subject_public_key_info();
        let key_ok = self.policy.key_types.contains(&KeyType::P256)
            && crate::ra::csr::key_type(spki) == crate::ra::csr::CsrKey::Supported(KeyType::P256);
        if key_ok {
            v.check("key-type", true, "P-256");
        } else {
            v.fail(
                Indeterminate,
                SubIndication::CryptoConstraintsFailure,
                "key-type",
                format!(
                    "{} keys are not accepted by the signature policy",
                    crate::ra::csr::key_type(spki)
                ),
            );
        }
        let mut summary = SignerSummary {
            subject: facts.subject.clone(),
            serial: facts.serial.clone(),
            issuer: facts.issuer.clone(),
            bank: facts.bank.clone(),
            profile: None,
            policy_oid: None,
            key_custody: None,
            not_before: facts.not_before_text.clone(),
            not_after: facts.not_after_text.clone(),
        };
        // Path at validation time.
        // A signature may carry a few intermediates; more only cost path-building time.
        let carried =
            &ev.other_certificates[..ev.other_certificates.len().min(MAX_CARRIED_CERTIFICATES)];
        let path = match self.paths.validate(
            known,
            carried,
            &self.intermediates,
            &self.anchors,
            now,
            &self.signatures,
        ) {
            Ok(p) => {
                v.check(
                    "certificate-path",
                    true,
                    format!("chains to {}", p.anchor.name),
                );
                Some(p)
            }
            Err(PathError::NoChain(why)) => {
                v.fail(
                    Indeterminate,
                    SubIndication::NoCertificateChainFound,
                    "certificate-path",
                    why,
                );
                None
            }
            Err(PathError::Constraints(why)) => {
                v.fail(
                    Indeterminate,
                    SubIndication::ChainConstraintsFailure,
                    "certificate-path",
                    why,
                );
                None
            }
            Err(PathError::CryptoConstraints(why)) => {
                v.fail(
                    Indeterminate,
                    SubIndication::CryptoConstraintsFailure,
                    "certificate-path",
                    why,
                );
                None
            }
        };
        let Some(path) = path else { return summary };
        // Accepted certificate policy (which profiles may sign payments).
        let valid_policies: Vec<_> = facts
            .policies
            .iter()
            .filter(|p| path.policies.contains(p))
            .copied()
            .collect();
        match self.policy.accepts(&valid_policies, path.anchor.own) {
            Some(a) => {
                summary.policy_oid = Some(a.oid_text().to_string());
                summary.profile = a.profile.clone();
                summary.key_custody = a
                    .profile
                    .as_deref()
                    .and_then(|p| self.profiles.get(p))
                    .map(|p| custody_name(p.key_custody).to_string());
                v.check(
                    "certificate-policy",
                    true,
                    format!("{} is accepted for payments", a.oid_text()),
                );
            }
            None => v.fail(
                Indeterminate,
                SubIndication::ChainConstraintsFailure,
                "certificate-policy",
                "the certificate's policy is not one the signature policy accepts for payment instructions",
            ),
        }
        // Key usage.
        let ku = facts.key_usage;
        for bit in &self.policy.required_key_usage {
            let flag = match bit {
                KeyUsageBit::DigitalSignature => KeyUsages::DigitalSignature,
                KeyUsageBit::NonRepudiation => KeyUsages::NonRepudiation,
                KeyUsageBit::KeyEncipherment => KeyUsages::KeyEncipherment,
                KeyUsageBit::KeyAgreement => KeyUsages::KeyAgreement,
            };
            if !ku.as_ref().is_some_and(|k| k.0.contains(flag)) {
                v.fail(
                    Indeterminate,
                    SubIndication::ChainConstraintsFailure,
                    "key-usage",
                    format!("the certificate's key usage lacks {bit:?}"),
                );
            }
        }
        // Extended key usage: with the extension, the certificate is for those purposes only.
        if let Some(purposes) = &facts.extended_key_usage {
            let accepted = &self.policy.accepted_extended_key_usages;
            if !purposes.iter().any(|p| accepted.contains(p)) {
                let named: Vec<String> = purposes.iter().map(|p| p.to_string()).collect();
                v.fail(
                    Indeterminate,
                    SubIndication::ChainConstraintsFailure,
                    "extended-key-usage",
                    format!(
                        "the certificate's extended key usage ({}) names no purpose the signature policy accepts for payment instructions",
                        if named.is_empty() {
                            "unreadable or empty".to_string()
                        } else {
                            named.join(", ")
                        }
                    ),
                );
            }
        }
        // Time.
        let claimed = ev.claimed_signing_time;
        let rules = &self.policy.rules;
        let (nb, na) = (facts.not_before, facts.not_after);
        match claimed {
            Some(t) if t > now + self.policy.max_clock_skew_secs => v.fail(
                Indeterminate,
                SubIndication::SigConstraintsFailure,
                "signing-time",
                format!("the claimed signing time {} lies in the future", rfc3339(t)),
            ),
            Some(t) if t < nb => {
                let i = if rules.claimed_time_before_not_before_fails {
                    TotalFailed
                } else {
                    Indeterminate
                };
                v.fail(
                    i,
                    SubIndication::NotYetValid,
                    "validity",
                    format!(
                        "the claimed signing time {} is before the certificate's notBefore {}",
                        rfc3339(t),
                        rfc3339(nb)
                    ),
                );
            }
            Some(t) if t > na => v.fail(
                Indeterminate,
                SubIndication::OutOfBoundsNoPoe,
                "validity",
                format!(
                    "the claimed signing time {} is after the certificate's notAfter {}",
                    rfc3339(t),
                    rfc3339(na)
                ),
            ),
            // The claim counts against the signer, never for them: it is no proof that the
            // signature existed while the certificate was valid (ETSI EN 319 102-1: without a
            // POE, the validation time decides).
            Some(t) if now > na => v.fail(
                Indeterminate,
                SubIndication::OutOfBoundsNoPoe,
                "validity",
                format!(
                    "expired at validation time (notAfter {}); the claimed signing time {} is the signer's own claim, not a proof of existence",
                    rfc3339(na),
                    rfc3339(t)
                ),
            ),
            Some(_) if now < nb => v.fail(
                Indeterminate,
                SubIndication::NotYetValid,
                "validity",
                "not yet valid at validation time",
            ),
            Some(t) => v.check(
                "validity",
                true,
                format!("valid at the claimed signing time {}", rfc3339(t)),
            ),
            None if now < nb => v.fail(
                Indeterminate,
                SubIndication::NotYetValid,
                "validity",
                "not yet valid at validation time",
            ),
            None if now > na => v.fail(
                Indeterminate,
                SubIndication::Expired,
                "validity",
                "expired at validation time, and no signing time is claimed",
            ),
            None => v.check(
                "validity",
                true,
                "valid at validation time (no signing time claimed)",
            ),
        }
        // Revocation.
        match self.status(known, &path) {
            Status::Good => v.check("revocation", true, "not revoked"),
            Status::OnHold { since, ca } => v.fail(
                Indeterminate,
                SubIndication::TryLater,
                "revocation",
                format!(
                    "{}on hold since {}; ask again later",
                    whose(&ca),
                    rfc3339(since)
                ),
            ),
            Status::Revoked { at, reason, ca } => {
                let reason = reason
                    .and_then(crate::ca::Reason::from_code)
                    .map(|r| r.name())
                    .unwrap_or("unspecified");
                let detail = format!("{}revoked at {} ({reason})", whose(&ca), rfc3339(at));
                match claimed {
                    Some(t) if at <= t => {
                        let i = if rules.revoked_before_claimed_time_fails { TotalFailed } else { Indeterminate };
                        let s = if i == TotalFailed { SubIndication::Revoked } else { SubIndication::RevokedNoPoe };
                        v.fail(i, s, "revocation", format!("{detail}, before the claimed signing time"));
                    }
                    Some(_) => v.fail(
                        Indeterminate,
                        SubIndication::RevokedNoPoe,
                        "revocation",
                        format!("{detail}, after the claimed signing time: no proof the signature existed before"),
                    ),
                    None if rules.unclaimed_time_is_validation_time => {
                        v.fail(TotalFailed, SubIndication::Revoked, "revocation", format!("{detail}; no signing time claimed"))
                    }
                    None => v.fail(Indeterminate, SubIndication::RevokedNoPoe, "revocation", detail),
                }
            }
            Status::Unknown(why) => {
                v.fail(Indeterminate, SubIndication::TryLater, "revocation", why)
            }
            Status::NotIssued(why) => v.fail(
                Indeterminate,
                SubIndication::CertificateChainGeneralFailure,
                "revocation",
                why,
            ),
        }
        summary
    }

    fn status(&self, known: &KnownCert, path: &ValidPath) -> Status {
        let (serial, anchor) = (&known.facts().serial, &path.anchor);
        if anchor.own {
            // Every certificate of the path below the root is Signet's: the signer's, then
            // each CA's (revoked ones are on the root's ARL).
            let signer = self.own_status(serial, &known.sha256, None);
            if !matches!(signer, Status::Good) {
                return signer;
            }
            let cas = path.chain.len().saturating_sub(1);
            for ca in path.chain.iter().take(cas).skip(1) {
                let der = match ca.to_der() {
                    Ok(der) => der,
                    Err(e) => return Status::Unknown(format!("a CA certificate of the path: {e}")),
                };
                let name = crate::ca::x509::name_text(ca.tbs_certificate().subject());
                let status =
                    self.own_status(&serial_hex(ca), &Sha256::digest(&der).into(), Some(name));
                if !matches!(status, Status::Good) {
                    return status;
                }
            }
            return Status::Good;
        }
        let Some(crl) = &anchor.crl else {
            return Status::Unknown(format!(
                "no CRL is configured for the trust anchor {}",
                anchor.name
            ));
        };
        // The anchor's CRL lists what the anchor itself issued: a signer certificate of one of
        // its sub-CAs (the path is then longer than signer and anchor) is not on it, and
        // neither is its serial that anchor's to give.
        if let [_signer, sub_ca, _, ..] = path.chain.as_slice() {
            return Status::Unknown(format!(
                "the signer's certificate was issued by {}, a sub-CA of the trust anchor {}: \
                 Signet has the anchor's CRL, not the sub-CA's",
                crate::ca::x509::name_text(sub_ca.tbs_certificate().subject()),
                anchor.name
            ));
        }
        // Checked (issuer, signature) when read: see RevocationList::of_anchor.
        let (crl, _) = crl.current();
        if crl.next_update() < self.clock.now() {
            return Status::Unknown(format!("the CRL of {} is past its nextUpdate", anchor.name));
        }
        match crl.revocation(serial) {
            Some((since, Some(HOLD_REASON_CODE))) => Status::OnHold { since, ca: None },
            Some((at, reason)) => Status::Revoked {
                at,
                reason,
                ca: None,
            },
            None => Status::Good,
        }
    }

    /// The status Signet's records give the certificate with `serial` whose DER has the
    /// SHA-256 `sha256`; `ca` names it when it is a CA of the path, not the signer's.
    fn own_status(&self, serial: &str, sha256: &[u8; 32], ca: Option<String>) -> Status {
        let which = || ca.clone().unwrap_or_else(|| "the certificate".into());
        let rec = match self.store.certificate_state(serial) {
            Ok(Some(rec)) => rec,
            Ok(None) => return Status::Unknown(format!("{} is not in Signet's records", which())),
            Err(e) => return Status::Unknown(format!("Signet's records are unavailable: {e}")),
        };
        if let Some(recorded) = &rec.thumbprint {
            if *recorded != hex::encode(sha256) {
                return Status::NotIssued(format!(
                    "{} bears serial {serial}, which Signet issued to another certificate: \
                     the one presented is not in Signet's records (its CA key signed \
                     something Signet did not issue; report it to the CA operator)",
                    which()
                ));
            }
        }
        match (rec.status, rec.revocation) {
            (CertStatus::Void, r) => Status::Revoked {
                at: r.map_or(rec.created_at, |r| r.revoked_at),
                reason: None,
                ca,
            },
            (_, Some(r)) if r.reason_code == Some(HOLD_REASON_CODE) => Status::OnHold {
                since: r.revoked_at,
                ca,
            },
            (_, Some(r)) => Status::Revoked {
                at: r.invalidity_date.unwrap_or(r.revoked_at).min(r.revoked_at),
                reason: r.reason_code,
                ca,
            },
            (CertStatus::Issued, None) => Status::Good,
            (CertStatus::Pending, None) => {
                Status::Unknown(format!("{} is not issued yet in Signet's records", which()))
            }
        }
    }

    /// The instruction's id, when the policy names an id field and the instruction is a JSON
    /// object. An object that names the field more than once is refused: which one a gateway
    /// reads depends on its JSON parser (first or last), so the replay guard could key
    /// another id than the one the payment is made under.
    fn instruction_id(&self, instruction: &[u8]) -> Result<Option<String>, String> {
        let field = &self.policy.replay.instruction_id_field;
        if field.is_empty() {
            return Ok(None);
        }
        let Some(members) = super::input::top_level_members(instruction, field) else {
            return Ok(None);
        };
        match members.as_slice() {
            [] => Ok(None),
            [one] => Ok(one.clone()),
            many => Err(format!(
                "the instruction names its {field:?} member {} times: which one a gateway reads depends on its JSON parser, so the replay guard cannot tell this instruction's id; have it signed again with the member once",
                many.len()
            )),
        }
    }
}

/// One instruction and its signature, as a gateway presents them.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub instruction: &'a [u8],
    /// DER, PEM or a JWS (compact or JSON).
    pub signature: &'a [u8],
}

/// An instruction decided but for what its records answer.
enum Decided {
    /// The signature could not be read: the report is final (one record, no replay keys).
    Unreadable(Box<Report>),
    Signers {
        evidence: Vec<SignerEvidence>,
        digest: String,
        /// One per signer, in the evidence's order.
        signers: Vec<Assessed>,
    },
}

/// A signer's verdict before the replay guard has answered.
struct Assessed {
    verdict: Verdict,
    summary: Option<SignerSummary>,
    /// Its replay-guard keys were recorded (it was otherwise good).
    guarded: bool,
}

impl Decided {
    /// The report, once the records' results are known: `applied` answers the unit of
    /// records [`Verifier::decide`] made, one result per write.
    fn finish(
        self,
        verifier: &Verifier,
        now: i64,
        applied: crate::store::Result<Vec<Applied>>,
    ) -> Result<Report, VerifyError> {
        let applied = applied?;
        for record in &applied {
            verifier.checkpoint_if_due(&record.audit);
        }
        match self {
            Decided::Unreadable(report) => Ok(*report),
            Decided::Signers {
                evidence,
                digest,
                signers,
            } => {
                debug_assert_eq!(applied.len(), signers.len(), "one record per signer");
                let mut reports = Vec::with_capacity(signers.len());
                for ((ev, signer), record) in evidence.iter().zip(signers).zip(&applied) {
                    let first_seen = record.first_seen;
                    reports.push(signer.finish(ev, first_seen, verifier.policy.replay.reject));
                }
                Ok(Report::combine(
                    evidence.first().map(|e| e.format),
                    rfc3339(now),
                    digest,
                    verifier.policy.description.clone(),
                    reports,
                    Vec::new(),
                ))
            }
        }
    }
}

impl Assessed {
    /// The signer's report, with the replay guard's answer: `first_seen` is when the same
    /// instruction (or instruction id) was presented before within the window, if it was.
    fn finish(self, ev: &SignerEvidence, first_seen: Option<i64>, reject: bool) -> SignerReport {
        let Assessed {
            verdict: mut v,
            summary,
            guarded,
        } = self;
        let replay = first_seen.map(|t| Replay {
            first_seen: rfc3339(t),
        });
        if let Some(t) = first_seen {
            if reject {
                v.fail(
                    Indication::Indeterminate,
                    SubIndication::SigConstraintsFailure,
                    "replay",
                    format!(
                        "this signer presented the same instruction (or instruction id) at {}",
                        rfc3339(t)
                    ),
                );
            } else {
                v.check(
                    "replay",
                    true,
                    format!("seen before at {} (the policy allows replays)", rfc3339(t)),
                );
            }
        } else if guarded {
            v.check("replay", true, "first presentation");
        }
        signer_report(ev, v, summary, replay)
    }
}

/// A verification's record for the group committer (see [`Store::record_verification`]):
/// replay-guard keys and an audit event that may depend on the guard's answer.
fn verification_write(
    guard: Option<ReplayKeys>,
    at: i64,
    window_secs: i64,
    event: impl Fn(Option<i64>) -> AuditEvent + Send + Sync + 'static,
) -> GroupedWrite {
    GroupedWrite::Verification {
        guard,
        at,
        window_secs,
        event: VerificationEvent(Arc::new(event)),
    }
}

fn signer_report(
    ev: &SignerEvidence,
    v: Verdict,
    summary: Option<SignerSummary>,
    replay: Option<Replay>,
) -> SignerReport {
    let law = article13(ev, summary.as_ref(), &v, true);
    let (indication, sub) = match v.failure {
        Some((i, s)) => (i, Some(s)),
        None => (Indication::TotalPassed, None),
    };
    SignerReport {
        indication,
        sub_indication: sub,
        signer: summary,
        claimed_signing_time: ev.claimed_signing_time.map(rfc3339),
        checks: v.checks,
        electronic_signature_law: law,
        replay,
    }
}

fn custody_name(c: KeyCustody) -> &'static str {
    match c {
        KeyCustody::CustomerDevice => "customer-device",
        KeyCustody::Hsm => "hsm",
    }
}

fn parse_certificate(bytes: &[u8], cache: &CertCache) -> Result<Arc<KnownCert>, String> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    let der = match text {
        Some(t) if t.starts_with("-----BEGIN") => der::pem::decode_vec(t.as_bytes())
            .map(|(_, d)| d)
            .map_err(|e| format!("bad PEM: {e}"))?,
        _ => bytes.to_vec(),
    };
    cache
        .get_or_parse(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))
}

/// Article 13's four conditions, each with what supports it (or not). `signed`: a signature
/// was presented (not a certificate alone, which can support neither 13(3) nor 13(4)).
fn article13(
    ev: &SignerEvidence,
    summary: Option<&SignerSummary>,
    v: &Verdict,
    signed: bool,
) -> ElectronicSignatureLaw {
    let passed = |name: &str| {
        v.checks.iter().any(|c| c.name == name && c.passed)
            && !v.checks.iter().any(|c| c.name == name && !c.passed)
    };
    let crypto_ok = ev.crypto == Crypto::Valid;
    let status_ok = passed("revocation") && passed("validity") && passed("certificate-path");
    let custody = summary.and_then(|s| s.key_custody.as_deref());
    let (c1, e1, c2, e2) = match custody {
        Some("customer-device") => (
            status_ok,
            Cow::Owned(format!(
                "the {} profile vouches that the key was generated on the holder's own device and proven by the CSR's signature at issuance; the certificate binds it to this subject{}",
                summary.and_then(|s| s.profile.as_deref()).unwrap_or("?"),
                if status_ok { " and was valid and unrevoked" } else { ", but its path, validity or status does not hold" }
            )),
            status_ok,
            Cow::Borrowed(if status_ok {
                "the key stays on the holder's device under the holder's control (profile key custody `customer-device`); Signet cannot observe the signing act itself; no revocation or hold suggests loss of control"
            } else {
                "the key stays on the holder's device under the holder's control (profile key custody `customer-device`); Signet cannot observe the signing act itself; the certificate's status does not support it"
            }),
        ),
        Some("hsm") if summary.and_then(|s| s.profile.as_deref()) == Some("seal") => (
            status_ok,
            "the bank's e-seal key was generated in Signet's HSM, cannot leave it, and is bound in Signet's records to this bank alone".into(),
            status_ok,
            "the e-seal key signs only for the bank's own `sealer` credentials, authorized request by request: it is under the bank's control".into(),
        ),
        Some("hsm") => (
            status_ok,
            "the key was generated in Signet's HSM, cannot leave it, and is bound in Signet's records to exactly one teller".into(),
            status_ok,
            "the HSM-held key signs only for its teller's own credential together with the key's PIN, checked for every request; the PIN is checked by Signet, not by the HSM (SoftHSM has one user PIN per token)".into(),
        ),
        _ => (
            false,
            "the certificate asserts no profile whose key custody Signet knows".into(),
            false,
            "no evidence about control of the key at signing time".into(),
        ),
    };
    const NO_SIGNATURE: &str =
        "no signature was presented: a certificate alone was checked, which says nothing of a signature or of the data it would cover";
    let (c3, e3) = if !signed {
        (false, NO_SIGNATURE)
    } else if crypto_ok {
        (
            true,
            if ev.signed_attributes {
                "the signature verifies under the certificate's key (over the signed attributes); any change to it would make it fail"
            } else {
                "the signature verifies under the certificate's key (over the content); any change to it would make it fail"
            },
        )
    } else {
        (false, "the signature does not verify")
    };
    let (c4, e4) = if !signed {
        (false, NO_SIGNATURE)
    } else if crypto_ok {
        (
            true,
            if ev.signed_attributes {
                "the signed message-digest matches the instruction: any change to its content or form would be detected"
            } else {
                "the signature covers the instruction's bytes: any change to its content or form would be detected"
            },
        )
    } else {
        (
            false,
            "the instruction does not match what was signed, or the signature does not verify",
        )
    };
    let conditions = vec![
        Condition { condition: "13(1)", text: "the signature-creation data, when used, belongs exclusively to the signer", supported: c1, evidence: e1 },
        Condition { condition: "13(2)", text: "the signature-creation data was under the sole control of the signer when signing", supported: c2, evidence: e2 },
        Condition { condition: "13(3)", text: "any change to the electronic signature after signing can be detected", supported: c3, evidence: Cow::Borrowed(e3) },
        Condition { condition: "13(4)", text: "any change to the content and form of the data message after signing can be detected", supported: c4, evidence: Cow::Borrowed(e4) },
    ];
    ElectronicSignatureLaw {
        article: "PRC Electronic Signature Law (2019), article 13",
        reliable: conditions.iter().all(|c| c.supported),
        conditions,
    }
}
