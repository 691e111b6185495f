//! Certification path validation (RFC 5280 section 6, the parts a payment verifier needs):
//! build a chain from the signer to a trust anchor, then check signatures, validity, basic
//! constraints and path length, key usage, critical extensions and certificate policies.

use const_oid::db::rfc5280 as oids;
use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::Digest as _;
use x509_cert::ext::pkix::{
    BasicConstraints, CertificatePolicies, InhibitAnyPolicy, KeyUsage, KeyUsages, PolicyMappings,
};
use x509_cert::Certificate;

use super::certs::KnownCert;
use std::sync::Arc;

/// The deepest chain considered (signer, intermediates, anchor).
const MAX_DEPTH: usize = 6;
/// Most signature checks spent building one path: a signature carrying many certificates
/// must not buy hours of CPU (rustls-webpki bounds its path search the same way).
const MAX_SIGNATURE_CHECKS: u32 = 100;

/// anyPolicy.
const ANY_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32.0");

/// Extensions this validator understands; any other critical one fails the path.
const KNOWN_EXTENSIONS: &[ObjectIdentifier] = &[
    oids::ID_CE_BASIC_CONSTRAINTS,
    oids::ID_CE_KEY_USAGE,
    oids::ID_CE_EXT_KEY_USAGE,
    oids::ID_CE_CERTIFICATE_POLICIES,
    // Processed in `valid_policies`. policyConstraints is understood without changing the
    // outcome: Signet maps no policies, and requires an accepted policy on every path anyway.
    oids::ID_CE_INHIBIT_ANY_POLICY,
    oids::ID_CE_POLICY_CONSTRAINTS,
    // Known so as to be refused by name in a CA certificate (`valid_policies`).
    oids::ID_CE_POLICY_MAPPINGS,
    oids::ID_CE_SUBJECT_KEY_IDENTIFIER,
    oids::ID_CE_AUTHORITY_KEY_IDENTIFIER,
    oids::ID_CE_CRL_DISTRIBUTION_POINTS,
    oids::ID_PE_AUTHORITY_INFO_ACCESS,
    oids::ID_CE_SUBJECT_ALT_NAME,
];

/// A trust anchor.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub certificate: Certificate,
    /// Signet's own hierarchy (revocation from the store) or another CA (revocation from its CRL).
    pub own: bool,
    /// The anchor's CRL, for anchors other than Signet's: read again when its file changes.
    pub crl: Option<std::sync::Arc<crate::watched::Watched<super::anchor_crl::RevocationList>>>,
    pub name: String,
}

/// Why a path failed, ranked: the most specific first when several candidates fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// No chain from the signer to any anchor.
    NoChain(String),
    /// A chain exists but a constraint fails (basic constraints, key usage, policies,
    /// unknown critical extension, a CA certificate out of its validity).
    Constraints(String),
    /// A certificate of the chain uses an algorithm or key Signet does not verify.
    CryptoConstraints(String),
}

/// A validated path: the certificates from the signer up to (and including) the anchor.
#[derive(Debug, Clone)]
pub struct ValidPath {
    pub chain: Vec<Certificate>,
    pub anchor: Anchor,
    /// Certificate policies valid for the signer through the whole path.
    pub policies: Vec<ObjectIdentifier>,
}

fn ext<'a, T: Decode<'a> + const_oid::AssociatedOid>(c: &'a Certificate) -> Option<(bool, T)> {
    c.tbs_certificate().get_extension::<T>().ok().flatten()
}

fn same_name(a: &x509_cert::name::Name, b: &x509_cert::name::Name) -> bool {
    match (a.to_der(), b.to_der()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Certificate signatures that verified, by the SHA-256 of (TBS DER, signature value,
/// issuer's public key). Whether a key made a signature over given bytes never changes, so
/// nothing here is ever stale; what does change (validity at a time, revocation status,
/// constraints) is checked on every call. Bounded: emptied when full.
pub struct SignatureCache {
    verified: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    capacity: usize,
}

impl SignatureCache {
    pub fn new(capacity: usize) -> Self {
        SignatureCache {
            verified: std::sync::Mutex::new(std::collections::HashSet::new()),
            capacity,
        }
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    fn insert(&self, key: [u8; 32]) {
        let mut set = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= self.capacity {
            set.clear();
        }
        set.insert(key);
    }

    /// Signatures remembered.
    pub fn len(&self) -> usize {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Paths that validated, by the certificates they were built from (the signer's and those the
/// signature carried, each by the SHA-256 of its DER; the verifier's own intermediates and
/// anchors are fixed for the cache's life). A path holds at every time at which each of its CA
/// certificates is valid, so an entry answers for that window and the search runs again
/// outside it; failures are not kept. Bounded: emptied when full.
pub struct PathCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], Arc<WindowedPath>>>,
    capacity: usize,
}

struct WindowedPath {
    path: Arc<ValidPath>,
    /// The CA certificates' common validity: [from, until].
    from: i64,
    until: i64,
}

impl PathCache {
    pub fn new(capacity: usize) -> Self {
        PathCache {
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
            capacity,
        }
    }

    /// [`validate_cached`] for `leaf` with the `carried` certificates before `intermediates`,
    /// answered from an earlier search when its path holds at `at`.
    pub fn validate(
        &self,
        leaf: &KnownCert,
        carried: &[Arc<KnownCert>],
        intermediates: &[Certificate],
        anchors: &[Anchor],
        at: i64,
        signatures: &SignatureCache,
    ) -> Result<Arc<ValidPath>, PathError> {
        let mut h = sha2::Sha256::new();
        h.update(leaf.sha256);
        for c in carried {
            h.update(c.sha256);
        }
        let key: [u8; 32] = h.finalize().into();
        if let Some(hit) = self.lock().get(&key) {
            if hit.from <= at && at <= hit.until {
                return Ok(hit.path.clone());
            }
        }
        let mut candidates: Vec<Certificate> = carried.iter().map(|c| c.cert.clone()).collect();
        candidates.extend(intermediates.iter().cloned());
        let path = Arc::new(validate_cached(
            &leaf.cert,
            &candidates,
            anchors,
            at,
            Some(signatures),
        )?);
        let cas = &path.chain[1..];
        let from = cas.iter().map(|c| validity(c).0).max().unwrap_or(i64::MIN);
        let until = cas.iter().map(|c| validity(c).1).min().unwrap_or(i64::MAX);
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(
            key,
            Arc::new(WindowedPath {
                path: path.clone(),
                from,
                until,
            }),
        );
        Ok(path)
    }

    /// Paths remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], Arc<WindowedPath>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks that `issuer`'s key made `cert`'s signature (ECDSA P-256 with SHA-256 only).
pub fn signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), PathError> {
    signed_by_cached(cert, issuer, None)
}

/// [`signed_by`], remembering signatures that verified in `cache`.
pub fn signed_by_cached(
    cert: &Certificate,
    issuer: &Certificate,
    cache: Option<&SignatureCache>,
) -> Result<(), PathError> {
    let alg = &cert.signature_algorithm().oid;
    if *alg != crate::ca::x509::ECDSA_WITH_SHA256 {
        return Err(PathError::CryptoConstraints(format!(
            "certificate signed with {alg}, not ecdsa-with-SHA256"
        )));
    }
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| PathError::NoChain(e.to_string()))?;
    let point = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let sig = cert.signature().raw_bytes();
    let key: Option<[u8; 32]> = cache.map(|_| {
        let mut h = sha2::Sha256::new();
        h.update((tbs.len() as u64).to_be_bytes());
        h.update(&tbs);
        h.update((sig.len() as u64).to_be_bytes());
        h.update(sig);
        h.update(point);
        h.finalize().into()
    });
    if let (Some(cache), Some(key)) = (cache, &key) {
        if cache.contains(key) {
            return Ok(());
        }
    }
    crate::ecdsa::verify_p256_sha256(point, &tbs, sig).map_err(|e| match e {
        crate::ecdsa::EcdsaError::BadKey(_) => {
            PathError::CryptoConstraints("not a P-256 key: invalid curve point".into())
        }
        crate::ecdsa::EcdsaError::BadEncoding { .. } => {
            PathError::NoChain("certificate signature is not DER ECDSA".into())
        }
        crate::ecdsa::EcdsaError::Mismatch => PathError::NoChain(
            "a certificate's signature does not verify under its issuer's key".into(),
        ),
    })?;
    if let (Some(cache), Some(key)) = (cache, key) {
        cache.insert(key);
    }
    Ok(())
}

/// Builds and validates the path of `leaf` at time `at` (Unix seconds), trying every
/// candidate chain and reporting the most specific failure when none holds.
pub fn validate(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Anchor],
    at: i64,
) -> Result<ValidPath, PathError> {
    validate_cached(leaf, intermediates, anchors, at, None)
}

/// [`validate`], with certificate signatures remembered in `cache`: every other check (CA
/// validity at `at`, constraints, policies) runs on every call.
pub fn validate_cached(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Anchor],
    at: i64,
    cache: Option<&SignatureCache>,
) -> Result<ValidPath, PathError> {
    let mut best: Option<PathError> = None;
    let mut found = None;
    let mut budget = MAX_SIGNATURE_CHECKS;
    search(
        leaf,
        intermediates,
        anchors,
        &mut vec![leaf.clone()],
        at,
        &mut Search {
            best: &mut best,
            found: &mut found,
            budget: &mut budget,
            cache,
        },
    );
    match found {
        Some(p) => Ok(p),
        None => Err(best.unwrap_or_else(|| {
            PathError::NoChain("the signer's certificate does not chain to a trusted anchor".into())
        })),
    }
}

fn rank(e: &PathError) -> u8 {
    match e {
        PathError::NoChain(_) => 0,
        PathError::Constraints(_) => 1,
        PathError::CryptoConstraints(_) => 2,
    }
}

fn keep_best(best: &mut Option<PathError>, e: PathError) {
    if best.as_ref().is_none_or(|b| rank(&e) > rank(b)) {
        *best = Some(e);
    }
}

/// The state of one path search.
struct Search<'a> {
    best: &'a mut Option<PathError>,
    found: &'a mut Option<ValidPath>,
    budget: &'a mut u32,
    cache: Option<&'a SignatureCache>,
}

impl Search<'_> {
    /// Spends one signature check; false when the budget is gone.
    fn spend(&mut self) -> bool {
        if *self.budget == 0 {
            keep_best(
                self.best,
                PathError::NoChain("too many candidate certificates to build a path".into()),
            );
            return false;
        }
        *self.budget -= 1;
        true
    }
}

fn search(
    current: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Anchor],
    chain: &mut Vec<Certificate>,
    at: i64,
    st: &mut Search<'_>,
) {
    if st.found.is_some() || chain.len() > MAX_DEPTH {
        return;
    }
    let issuer_name = current.tbs_certificate().issuer();
    for anchor in anchors {
        if !same_name(anchor.certificate.tbs_certificate().subject(), issuer_name) {
            continue;
        }
        if !st.spend() {
            return;
        }
        match signed_by_cached(current, &anchor.certificate, st.cache) {
            Ok(()) => {
                let mut full = chain.clone();
                full.push(anchor.certificate.clone());
                match check_chain(&full, at) {
                    Ok(policies) => {
                        *st.found = Some(ValidPath {
                            chain: full,
                            anchor: anchor.clone(),
                            policies,
                        });
                        return;
                    }
                    Err(e) => keep_best(st.best, e),
                }
            }
            Err(e) => keep_best(st.best, e),
        }
    }
    for cand in intermediates {
        if chain.iter().any(|c| c == cand)
            || !same_name(cand.tbs_certificate().subject(), issuer_name)
        {
            continue;
        }
        if !st.spend() {
            return;
        }
        match signed_by_cached(current, cand, st.cache) {
            Ok(()) => {
                chain.push(cand.clone());
                search(cand, intermediates, anchors, chain, at, st);
                chain.pop();
                if st.found.is_some() {
                    return;
                }
            }
            Err(e) => keep_best(st.best, e),
        }
    }
}

/// notBefore and notAfter, Unix seconds.
pub(crate) fn validity(c: &Certificate) -> (i64, i64) {
    let v = c.tbs_certificate().validity();
    (
        v.not_before.to_unix_duration().as_secs() as i64,
        v.not_after.to_unix_duration().as_secs() as i64,
    )
}

/// Validity of one certificate at `at`.
pub fn valid_at(c: &Certificate, at: i64) -> bool {
    let (nb, na) = validity(c);
    nb <= at && at <= na
}

/// The checks of RFC 5280 6.1.3-6.1.4 on a complete chain (leaf first, anchor last). The
/// leaf's own validity is left to the caller (it depends on the claimed signing time).
fn check_chain(chain: &[Certificate], at: i64) -> Result<Vec<ObjectIdentifier>, PathError> {
    for c in chain {
        if let Some(exts) = c.tbs_certificate().extensions() {
            for e in exts {
                if e.critical && !KNOWN_EXTENSIONS.contains(&e.extn_id) {
                    return Err(PathError::Constraints(format!(
                        "certificate has an unknown critical extension {}",
                        e.extn_id
                    )));
                }
            }
        }
    }
    // Issuers: CA, keyCertSign, path length, validity.
    let issuers = &chain[1..];
    for (i, ca) in issuers.iter().enumerate() {
        let below = i; // CA certificates between this issuer and the leaf
        match ext::<BasicConstraints>(ca) {
            Some((_, bc)) if bc.ca => {
                if let Some(len) = bc.path_len_constraint {
                    if below > usize::from(len) {
                        return Err(PathError::Constraints(
                            "a CA's path length constraint is exceeded".into(),
                        ));
                    }
                }
            }
            _ => {
                return Err(PathError::Constraints(
                    "an issuer in the chain is not a CA (basicConstraints)".into(),
                ))
            }
        }
        // Read strictly: an unreadable keyUsage taken as absent would skip keyCertSign.
        if let Some(ku) = checked_ext::<KeyUsage>(ca)? {
            if !ku.0.contains(KeyUsages::KeyCertSign) {
                return Err(PathError::Constraints(
                    "an issuer's key usage lacks keyCertSign".into(),
                ));
            }
        }
        if !valid_at(ca, at) {
            return Err(PathError::Constraints(
                "a CA certificate of the chain is outside its validity period".into(),
            ));
        }
    }
    valid_policies(chain)
}

/// An extension of `c` that restricts the path: one that is there but cannot be read fails the
/// path (read as absent, a malformed inhibitAnyPolicy or keyUsage would lift its restriction).
fn checked_ext<'a, T: Decode<'a> + const_oid::AssociatedOid>(
    c: &'a Certificate,
) -> Result<Option<T>, PathError> {
    match c.tbs_certificate().get_extension::<T>() {
        Ok(found) => Ok(found.map(|(_, v)| v)),
        Err(_) => Err(PathError::Constraints(format!(
            "a certificate's extension {} cannot be read",
            T::OID
        ))),
    }
}

/// The certificate policies valid for the leaf through `chain` (leaf first, anchor last): RFC
/// 5280's valid_policy_tree (6.1.3 (d)-(e), 6.1.4 (h) and (j)) kept as a set, which is exact
/// because Signet maps no policies: a CA certificate with policyMappings fails the path. The
/// anchor's own extensions are not processed, as in 6.1 (it is not part of the path). May
/// hold anyPolicy; the caller asks for the policies the leaf itself asserts.
fn valid_policies(chain: &[Certificate]) -> Result<Vec<ObjectIdentifier>, PathError> {
    // Top of the path (the certificate the anchor issued) first; the anchor left out.
    let path: Vec<&Certificate> = chain[..chain.len() - 1].iter().rev().collect();
    let n = path.len();
    // Empty is RFC 5280's NULL tree: no policy is valid, and none can become valid below.
    let mut valid = vec![ANY_POLICY];
    // inhibit_anyPolicy: how many more certificates (not self-issued) may assert anyPolicy.
    let mut inhibit_any = n + 1;
    for (i, cert) in path.into_iter().enumerate() {
        let last = i + 1 == n;
        let tbs = cert.tbs_certificate();
        let self_issued = same_name(tbs.issuer(), tbs.subject());
        valid = match checked_ext::<CertificatePolicies>(cert)? {
            // (e): a certificate without the extension leaves no valid policy.
            None => Vec::new(),
            Some(cp) => {
                let asserted: Vec<ObjectIdentifier> =
                    cp.0.iter().map(|p| p.policy_identifier).collect();
                // (d)(1): each policy it asserts that is valid above (or under anyPolicy).
                let mut next: Vec<ObjectIdentifier> = asserted
                    .iter()
                    .filter(|p| **p != ANY_POLICY)
                    .filter(|p| valid.contains(p) || valid.contains(&ANY_POLICY))
                    .copied()
                    .collect();
                // (d)(2): anyPolicy carries every valid policy down, unless inhibited.
                if asserted.contains(&ANY_POLICY) && (inhibit_any > 0 || (!last && self_issued)) {
                    for p in &valid {
                        if !next.contains(p) {
                            next.push(*p);
                        }
                    }
                }
                next
            }
        };
        if last {
            break;
        }
        // 6.1.4 (a)-(b) would map policies; a mapping Signet did not apply would leave the
        // issuer-domain policy valid where the RFC does not.
        if checked_ext::<PolicyMappings>(cert)?.is_some() {
            return Err(PathError::Constraints(
                "a CA certificate of the path maps certificate policies (policyMappings), which Signet does not process".into(),
            ));
        }
        // 6.1.4 (h) and (j), for the next certificate.
        if !self_issued {
            inhibit_any = inhibit_any.saturating_sub(1);
        }
        if let Some(InhibitAnyPolicy(skip)) = checked_ext::<InhibitAnyPolicy>(cert)? {
            inhibit_any = inhibit_any.min(usize::try_from(skip).unwrap_or(usize::MAX));
        }
    }
    Ok(valid)
}

/// keyUsage of a certificate, if it states one.
pub fn key_usage(c: &Certificate) -> Option<KeyUsage> {
    ext::<KeyUsage>(c).map(|(_, ku)| ku)
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    const ROOT: &[u8] = include_bytes!("../../fuzz/fixtures/root.der");
    const CA: &[u8] = include_bytes!("../../fuzz/fixtures/ca.der");
    const SIGNER: &[u8] = include_bytes!("../../fuzz/fixtures/signer.der");
    /// 2027-01-15, inside every fixture's validity (2026-11-26 .. 2036-11-23).
    const AT: i64 = 1_800_000_000;

    fn anchors() -> Vec<Anchor> {
        vec![Anchor {
            certificate: Certificate::from_der(ROOT).unwrap(),
            own: true,
            crl: None,
            name: "test-root".into(),
        }]
    }

    fn known(der: &[u8]) -> Arc<KnownCert> {
        Arc::new(KnownCert::parse(der).unwrap())
    }

    #[test]
    fn a_cached_path_is_the_one_found_and_answers_again_inside_its_window() {
        let cache = PathCache::new(8);
        let signatures = SignatureCache::new(8);
        let (leaf, carried) = (known(SIGNER), vec![known(CA)]);
        let first = cache
            .validate(&leaf, &carried, &[], &anchors(), AT, &signatures)
            .expect("the fixture chain validates");
        assert_eq!(first.chain.len(), 3);
        assert_eq!(first.anchor.name, "test-root");
        let again = cache
            .validate(&leaf, &carried, &[], &anchors(), AT + 86_400, &signatures)
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn outside_the_cas_validity_the_cached_path_does_not_answer() {
        let cache = PathCache::new(8);
        let signatures = SignatureCache::new(8);
        let (leaf, carried) = (known(SIGNER), vec![known(CA)]);
        cache
            .validate(&leaf, &carried, &[], &anchors(), AT, &signatures)
            .unwrap();
        // 2040: the CA and the root have expired.
        let later = cache.validate(&leaf, &carried, &[], &anchors(), 2_200_000_000, &signatures);
        assert!(matches!(later, Err(PathError::Constraints(_))), "{later:?}");
    }

    #[test]
    fn other_carried_certificates_are_another_entry() {
        let cache = PathCache::new(8);
        let signatures = SignatureCache::new(8);
        let leaf = known(SIGNER);
        let with_ca = cache.validate(&leaf, &[known(CA)], &[], &anchors(), AT, &signatures);
        assert!(with_ca.is_ok());
        // Without the CA the signer does not chain: the earlier success is not reused.
        let alone = cache.validate(&leaf, &[], &[], &anchors(), AT, &signatures);
        assert!(matches!(alone, Err(PathError::NoChain(_))), "{alone:?}");
    }

    // Certificate policies (RFC 5280 6.1.3 (d)-(e), 6.1.4 (h), (j)), on chains made here.

    use crate::ca::x509::{extension, DecidedProfile, PreparedCertificate};
    use std::str::FromStr;
    use x509_cert::ext::pkix::certpolicy::PolicyInformation;
    use x509_cert::ext::pkix::{PolicyConstraints, PolicyMapping, PolicyMappings};
    use x509_cert::ext::Extension;
    use x509_cert::name::Name;

    const P: &str = "1.3.6.1.4.1.32473.1";
    const Q: &str = "1.3.6.1.4.1.32473.2";
    const ANY: &str = "2.5.29.32.0";

    fn oid(s: &str) -> ObjectIdentifier {
        ObjectIdentifier::new_unwrap(s)
    }

    /// certificatePolicies with these OIDs.
    fn policies(oids: &[&str]) -> Extension {
        let info = oids
            .iter()
            .map(|o| PolicyInformation {
                policy_identifier: oid(o),
                policy_qualifiers: None,
            })
            .collect();
        extension(&CertificatePolicies(info), false).unwrap()
    }

    fn inhibit_any_policy(skip: u32) -> Extension {
        extension(&InhibitAnyPolicy(skip), true).unwrap()
    }

    /// A certificate named `cn`, issued by `issuer` (self-issued when the same name), signed
    /// for real with a key drawn from `seed`; a CA unless it is the leaf.
    fn cert(cn: &str, issuer: &str, seed: u8, ca: bool, mut exts: Vec<Extension>) -> Certificate {
        let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).unwrap();
        if ca {
            let bc = BasicConstraints {
                ca: true,
                path_len_constraint: None,
            };
            exts.push(extension(&bc, true).unwrap());
        }
        let profile = DecidedProfile {
            subject: Name::from_str(&format!("CN={cn}")).unwrap(),
            issuer: Name::from_str(&format!("CN={issuer}")).unwrap(),
            extensions: exts,
        };
        let prepared = PreparedCertificate::new(
            &[seed; 8],
            AT - 3600,
            AT + 3600,
            spki,
            profile,
            *key.verifying_key(),
        )
        .unwrap();
        let signature: p256::ecdsa::DerSignature =
            p256::ecdsa::signature::Signer::sign(&key, &prepared.tbs_der);
        Certificate::from_der(&prepared.assemble(signature.as_bytes()).unwrap()).unwrap()
    }

    /// The policies valid for a leaf asserting `leaf` under CAs asserting what `cas` lists
    /// (top first, below a root with no policies; None: no certificatePolicies).
    fn valid_under(cas: &[(Option<&[&str]>, Vec<Extension>)], leaf: &[&str]) -> Vec<String> {
        let mut chain = vec![cert("Root", "Root", 1, true, vec![])];
        for (i, (oids, more)) in cas.iter().enumerate() {
            let mut exts = more.clone();
            exts.extend(oids.map(policies));
            let issuer = if i == 0 {
                "Root".into()
            } else {
                format!("CA{}", i - 1)
            };
            chain.push(cert(&format!("CA{i}"), &issuer, 2 + i as u8, true, exts));
        }
        let issuer = format!("CA{}", cas.len() - 1);
        chain.push(cert("Signer", &issuer, 9, false, vec![policies(leaf)]));
        chain.reverse();
        check_chain(&chain, AT)
            .expect("the chain's constraints hold")
            .iter()
            .map(|o| o.to_string())
            .collect()
    }

    #[test]
    fn a_policy_every_ca_asserts_or_carries_with_any_policy_is_valid_for_the_leaf() {
        let cas = [(Some(&[ANY][..]), vec![]), (Some(&[P, Q][..]), vec![])];
        assert_eq!(valid_under(&cas, &[P]), [P]);
    }

    #[test]
    fn a_ca_that_does_not_assert_the_leafs_policy_leaves_it_invalid() {
        let cas = [(Some(&[Q][..]), vec![])];
        assert!(valid_under(&cas, &[P]).is_empty());
    }

    #[test]
    fn a_ca_without_certificate_policies_leaves_no_policy_valid_below_it() {
        // 6.1.3 (e): the valid_policy_tree becomes NULL, whatever the CAs below assert.
        let cas = [(None, vec![]), (Some(&[ANY][..]), vec![])];
        assert!(valid_under(&cas, &[P]).is_empty());
        let cas = [(Some(&[P][..]), vec![]), (None, vec![])];
        assert!(valid_under(&cas, &[P]).is_empty());
    }

    #[test]
    fn inhibit_any_policy_stops_any_policy_in_the_cas_below_it() {
        // CA0 asserts P and allows no more anyPolicy below it: CA1's anyPolicy carries nothing.
        let inhibited = [
            (Some(&[P][..]), vec![inhibit_any_policy(0)]),
            (Some(&[ANY][..]), vec![]),
        ];
        assert!(valid_under(&inhibited, &[P]).is_empty());
        // With one certificate's grace, CA1's anyPolicy still counts.
        let graced = [
            (Some(&[P][..]), vec![inhibit_any_policy(1)]),
            (Some(&[ANY][..]), vec![]),
        ];
        assert_eq!(valid_under(&graced, &[P]), [P]);
    }

    #[test]
    fn a_self_issued_ca_may_assert_any_policy_where_inhibit_any_policy_forbids_it_to_others() {
        // 6.1.3 (d)(2): below inhibitAnyPolicy 0, anyPolicy counts in a self-issued CA
        // certificate (a key rollover) but not in the leaf or another CA.
        let root = cert("Root", "Root", 1, true, vec![]);
        let ca = cert(
            "CA0",
            "Root",
            2,
            true,
            vec![policies(&[P]), inhibit_any_policy(0)],
        );
        let rollover = cert("CA0", "CA0", 3, true, vec![policies(&[ANY])]);
        let leaf = cert("Signer", "CA0", 9, false, vec![policies(&[P])]);
        let valid = check_chain(&[leaf, rollover, ca, root], AT).unwrap();
        assert_eq!(valid, [oid(P)]);
    }

    #[test]
    fn an_unreadable_inhibit_any_policy_fails_the_path_instead_of_being_ignored() {
        let root = cert("Root", "Root", 1, true, vec![]);
        let mut broken = inhibit_any_policy(0);
        broken.extn_value = der::asn1::OctetString::new(vec![0x04, 0x00]).unwrap();
        let ca = cert("CA0", "Root", 2, true, vec![policies(&[ANY]), broken]);
        let leaf = cert("Signer", "CA0", 9, false, vec![policies(&[P])]);
        let refused = check_chain(&[leaf, ca, root], AT);
        assert!(
            matches!(&refused, Err(PathError::Constraints(why)) if why.contains("2.5.29.54")),
            "{refused:?}"
        );
    }

    #[test]
    fn an_unreadable_key_usage_in_a_ca_fails_the_path_instead_of_being_ignored() {
        let root = cert("Root", "Root", 1, true, vec![]);
        let mut broken = extension(&KeyUsage(KeyUsages::DigitalSignature.into()), true).unwrap();
        broken.extn_value = der::asn1::OctetString::new(vec![0x05, 0x00]).unwrap();
        let ca = cert("CA0", "Root", 2, true, vec![policies(&[ANY]), broken]);
        let leaf = cert("Signer", "CA0", 9, false, vec![policies(&[P])]);
        let refused = check_chain(&[leaf, ca, root], AT);
        assert!(
            matches!(&refused, Err(PathError::Constraints(why)) if why.contains("2.5.29.15")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_critical_policy_constraints_is_understood_and_a_policy_mapping_fails_the_path() {
        let constraints = PolicyConstraints {
            require_explicit_policy: Some(0),
            inhibit_policy_mapping: Some(0),
        };
        let cas = [(Some(&[P][..]), vec![extension(&constraints, true).unwrap()])];
        assert_eq!(valid_under(&cas, &[P]), [P]);

        let mapping = PolicyMappings(vec![PolicyMapping {
            issuer_domain_policy: oid(P),
            subject_domain_policy: oid(Q),
        }]);
        // Critical or not: a mapping not applied would leave P valid where the RFC does not.
        for critical in [true, false] {
            let root = cert("Root", "Root", 1, true, vec![]);
            let ca = cert(
                "CA0",
                "Root",
                2,
                true,
                vec![policies(&[P]), extension(&mapping, critical).unwrap()],
            );
            let leaf = cert("Signer", "CA0", 9, false, vec![policies(&[P])]);
            let refused = check_chain(&[leaf, ca, root], AT);
            assert!(
                matches!(&refused, Err(PathError::Constraints(why)) if why.contains("policyMappings")),
                "critical {critical}: {refused:?}"
            );
        }
    }
}
