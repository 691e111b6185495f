//! The HSM layer: the only module that speaks PKCS#11 (through cryptoki).
//!
//! It loads the module, finds the token by label or RFC 7512 URI, logs in with a PIN read for
//! each login and zeroized right after, keeps a bounded pool of sessions, generates P-256 keys
//! that never leave the token, and signs (software SHA-256, CKM_ECDSA, r‖s → DER).
//!
//! Failures are classed: a stale session or handle is replaced and the operation retried once;
//! a failed module (device error, not initialized, token gone) makes the layer finalize and
//! re-initialize its whole PKCS#11 context, with bounded backoff while the token stays away.

mod deadline;
mod error;
mod pin;
mod uri;

pub use error::{FailureClass, HsmError, ReturnCode};
pub use pin::PinSource;
pub use uri::TokenSelector;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

/// DER of the prime256v1 (P-256) curve OID, the CKA_EC_PARAMS of every key we make.
const P256_EC_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Longest wait between two attempts to re-initialize a failed module.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Fresh scans that must all miss a token before `init_token` creates it.
const TOKEN_ABSENT_SCANS: u32 = 5;
/// Extra looks for a token that is not found at start (about 1.5 s in all).
const TOKEN_LOOKUP_RETRIES: u32 = 7;

/// How to reach a token.
#[derive(Debug, Clone)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`libsofthsm2.so`, `p11-kit-client.so`, a vendor's library).
    pub module: PathBuf,
    pub token: TokenSelector,
    pub pin: PinSource,
    /// Most sessions open at once (the pool's bound).
    pub sessions: usize,
    /// How long a caller waits for a free session before getting `Unavailable`.
    pub checkout_timeout: Duration,
    /// Longest a caller waits for any operation (session wait, recovery and the PKCS#11 calls
    /// together) before getting `Unavailable`; zero calls the module in the caller's thread,
    /// unbounded.
    pub call_timeout: Duration,
}

impl HsmConfig {
    /// How long finalizing a failed context waits for its calls still in the module: as long
    /// as a caller waits for one (after that nobody is waiting for the answer).
    fn finalize_wait(&self) -> Option<Duration> {
        (!self.call_timeout.is_zero()).then_some(self.call_timeout)
    }

    /// How long a call that must run alone (making or destroying a key) waits for the calls
    /// in flight: half the call timeout, so that the caller, whose wait began before its
    /// hand-off and session checkout, hears why; every other call waits behind it meanwhile.
    fn alone_wait(&self) -> Option<Duration> {
        self.finalize_wait().map(|t| t / 2)
    }
}

/// The security attributes of a private key, read back from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttributes {
    pub private: bool,
    pub sensitive: bool,
    pub always_sensitive: bool,
    pub extractable: bool,
    pub never_extractable: bool,
    pub sign: bool,
    pub decrypt: bool,
    pub unwrap: bool,
    pub derive: bool,
    pub always_authenticate: bool,
}

/// Counters for monitoring.
#[derive(Debug, Clone, Default)]
pub struct HsmStats {
    pub signs: u64,
    pub sign_seconds: f64,
    pub errors: u64,
    pub recoveries: u64,
    /// Operations abandoned at the call timeout.
    pub timeouts: u64,
}

#[derive(Default)]
struct Counters {
    signs: AtomicU64,
    sign_nanos: AtomicU64,
    errors: AtomicU64,
    recoveries: AtomicU64,
    timeouts: AtomicU64,
}

/// A connection to one token, shared by all threads of the process.
pub struct Hsm {
    // Dropped first: the worker threads end before the module is finalized.
    workers: deadline::Workers,
    inner: Arc<Inner>,
}

/// The connection's state; operations run on it from the worker threads.
struct Inner {
    config: HsmConfig,
    state: Mutex<State>,
    counters: Counters,
}

enum State {
    Up(Arc<Context>),
    Down {
        reason: String,
        next_attempt: Instant,
        backoff: Duration,
        /// A thread is finalizing the failed context or building the next one. Both run
        /// outside the state lock (a module may block in either), and meanwhile other
        /// callers are told the HSM is unavailable rather than made to wait.
        busy: bool,
    },
}

/// Clears `State::Down::busy` when dropped: also when the thread that set it unwinds from a
/// panic in the module's C_Initialize or C_Finalize, which would otherwise leave every later
/// call refused. (Declared before the state's lock guard, so dropped after it.)
struct ClearBusy<'a>(&'a Mutex<State>);

impl Drop for ClearBusy<'_> {
    fn drop(&mut self) {
        if let State::Down { busy, .. } = &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            *busy = false;
        }
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Live contexts of this process: C_Finalize is called only when the last one goes, since the
/// module's initialization is process-wide.
static LIVE_CONTEXTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One initialized PKCS#11 context: the module, the token's slot, a login and a session pool.
struct Context {
    generation: u64,
    pkcs11: Pkcs11,
    slot: Slot,
    /// Held open for the life of the context: PKCS#11 login state lives as long as one session.
    login_session: Mutex<Session>,
    pool: Mutex<PoolState>,
    pool_freed: Condvar,
    keys: Mutex<HashMap<String, ObjectHandle>>,
    /// Held (shared) during every PKCS#11 call made through the context (see [`Context::enter`]);
    /// finalize takes it exclusively, so C_Finalize does not run under another thread's call -
    /// unless that call has outlived the call timeout (see [`Context::finalize`]).
    calls: RwLock<()>,
    /// Finalized: its sessions are forgotten, never closed (their handle numbers may be reused
    /// by the next context).
    dead: AtomicBool,
    token_label: String,
}

/// How a call shares its context with other calls ([`Context::enter_as`]).
#[derive(Debug, Clone, Copy)]
enum Access {
    Shared,
    Alone,
}

/// Held for the length of one call into the module.
enum CallGuard<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

struct PoolState {
    idle: Vec<Session>,
    open: usize,
    capacity: usize,
}

/// A session checked out of the pool; goes back on drop unless marked bad.
struct Lease {
    ctx: Arc<Context>,
    session: Option<Session>,
    bad: bool,
}

impl Lease {
    fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("lease holds a session until drop")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let mut pool = self.ctx.pool.lock().unwrap_or_else(|e| e.into_inner());
        if self.ctx.dead.load(Ordering::SeqCst) {
            // Sessions are opened without close-on-drop: dropping one forgets it.
            pool.open = pool.open.saturating_sub(1);
        } else if self.bad {
            pool.open = pool.open.saturating_sub(1);
            drop(pool);
            // Closed only while the context lives (a session of a finalized module is forgotten).
            if let Some(_call) = self.ctx.enter() {
                let _ = session.close();
            }
            self.ctx.pool_freed.notify_one();
            return;
        } else {
            pool.idle.push(session);
        }
        drop(pool);
        self.ctx.pool_freed.notify_one();
    }
}

/// A call held in the module by [`Hsm::fault_hold_call`]; it returns when this is dropped.
#[doc(hidden)]
pub struct HeldCall {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HeldCall {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Hsm {
    /// Loads the module, finds the token and logs in. Fails at once (no retry) so that a wrong
    /// PIN or label is reported to the operator rather than retried.
    pub fn open(config: HsmConfig) -> Result<Self, HsmError> {
        // SoftHSM rewrites a token's files while another process logs in or writes objects; a
        // process that initializes at that moment may not see the token. Look again (a fresh
        // C_Initialize each time) before calling it missing.
        let mut attempt = 0;
        let ctx = loop {
            match Context::build(&config) {
                Err(e)
                    if attempt < TOKEN_LOOKUP_RETRIES
                        && (matches!(e, HsmError::TokenNotFound { .. })
                            || e.class() == FailureClass::Module
                            || e.return_code() == Some("CKR_USER_PIN_NOT_INITIALIZED")) =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50 * attempt as u64));
                }
                other => break other?,
            }
        };
        let max_threads = 4 * config.sessions.max(1) + 4;
        Ok(Hsm {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::Up(Arc::new(ctx))),
                counters: Counters::default(),
            }),
            workers: deadline::Workers::new(max_threads),
        })
    }

    pub fn stats(&self) -> HsmStats {
        let c = &self.inner.counters;
        HsmStats {
            signs: c.signs.load(Ordering::Relaxed),
            sign_seconds: c.sign_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            errors: c.errors.load(Ordering::Relaxed),
            recoveries: c.recoveries.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
        }
    }

    /// The token's label as configured (for messages).
    pub fn token_name(&self) -> String {
        self.inner.token_name()
    }

    /// Runs one operation with the configured bound on the caller's wait.
    fn call<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Inner) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let timeout = self.inner.config.call_timeout;
        if timeout.is_zero() {
            return op(&self.inner);
        }
        let inner = self.inner.clone();
        match self.workers.run(timeout, move || op(&inner)) {
            Ok(result) => result,
            Err(why) => {
                let counters = &self.inner.counters;
                counters.errors.fetch_add(1, Ordering::Relaxed);
                let reason = match why {
                    deadline::NoAnswer::TimedOut => {
                        counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        format!(
                            "no answer within {} ms ([hsm].call_timeout_ms)",
                            timeout.as_millis()
                        )
                    }
                    deadline::NoAnswer::Panicked => "the operation failed unexpectedly".into(),
                };
                tracing::warn!(token = %self.token_name(), %reason, "HSM call abandoned");
                Err(HsmError::Unavailable {
                    token: self.token_name(),
                    reason,
                })
            }
        }
    }

    /// Is the token reachable right now? (Tries a recovery when one is due.)
    pub fn is_available(&self) -> bool {
        self.call(|i| Ok(i.is_available())).unwrap_or(false)
    }

    /// Signs `data` with the P-256 key labelled `key`: SHA-256 in software, CKM_ECDSA in the
    /// token, and the r‖s result re-encoded as a DER ECDSA-Sig-Value.
    pub fn sign_p256_sha256(&self, key: &str, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.sign_many_p256_sha256(key, &[data])?
            .pop()
            .ok_or_else(|| self.no_signature(key))
    }

    /// ECDSA P-256 signatures (DER) over the SHA-256 of each of `datas` with the key labelled
    /// `key`, in order: one call into the layer and one session for them all, so that a batch
    /// of certificates costs one hand-off to an HSM thread rather than one per certificate.
    /// All or nothing: a failure fails the whole call.
    pub fn sign_many_p256_sha256(
        &self,
        key: &str,
        datas: &[&[u8]],
    ) -> Result<Vec<Vec<u8>>, HsmError> {
        let label = key.to_string();
        let digests: Vec<Vec<u8>> = datas.iter().map(|d| Sha256::digest(d).to_vec()).collect();
        let signatures = self.call(move |i| i.sign_digests(&label, &digests))?;
        if signatures.len() != datas.len() {
            return Err(self.no_signature(key));
        }
        Ok(signatures)
    }

    fn no_signature(&self, key: &str) -> HsmError {
        HsmError::BadTokenData {
            token: self.token_name(),
            key: key.into(),
            reason: "fewer signatures than were asked for".into(),
        }
    }

    /// The public half of the P-256 key pair labelled `key`.
    pub fn public_key(&self, key: &str) -> Result<p256::PublicKey, HsmError> {
        let key = key.to_string();
        self.call(move |i| i.public_key(&key))
    }

    /// Does the token hold a private key with this label?
    pub fn has_key(&self, key: &str) -> Result<bool, HsmError> {
        let key = key.to_string();
        self.call(move |i| i.has_key(&key))
    }

    /// Generates a P-256 key pair inside the token: the private half sensitive,
    /// non-extractable, sign-only (decrypt, unwrap, derive false) and usable without a
    /// per-operation login. Refuses a label that is already taken.
    pub fn generate_p256(&self, key: &str) -> Result<p256::PublicKey, HsmError> {
        let key = key.to_string();
        self.call(move |i| i.generate_p256(&key))
    }

    /// Reads back the security attributes of the private key labelled `key`.
    pub fn key_attributes(&self, key: &str) -> Result<KeyAttributes, HsmError> {
        let key = key.to_string();
        self.call(move |i| i.key_attributes(&key, ObjectClass::PRIVATE_KEY))
    }

    /// Reads back the security attributes of the secret key labelled `key`.
    pub fn secret_key_attributes(&self, key: &str) -> Result<KeyAttributes, HsmError> {
        let key = key.to_string();
        self.call(move |i| i.key_attributes(&key, ObjectClass::SECRET_KEY))
    }

    /// Does the token hold a secret key with this label?
    pub fn has_secret_key(&self, key: &str) -> Result<bool, HsmError> {
        let key = key.to_string();
        self.call(move |i| {
            i.with_session(Some(&key), |ctx, s| {
                Ok(!find_keys(ctx, s, ObjectClass::SECRET_KEY, &key)?.is_empty())
            })
        })
    }

    /// Generates a 256-bit HMAC key inside the token (CKK_GENERIC_SECRET): sensitive,
    /// non-extractable, for CKM_SHA256_HMAC only (sign and verify; no encrypt, wrap or
    /// derive). Refuses a label that is already taken.
    pub fn generate_hmac_key(&self, key: &str) -> Result<(), HsmError> {
        let key = key.to_string();
        self.call(move |i| i.generate_hmac_key(&key))
    }

    /// Destroys the one secret key labelled `key` (C_DestroyObject): for a key this process
    /// made and nothing uses. Refuses when no key, or several, have the label.
    pub fn destroy_secret_key(&self, key: &str) -> Result<(), HsmError> {
        let key = key.to_string();
        self.call(move |i| {
            i.with_session_alone(Some(&key), |ctx, s| {
                let handle = ctx.one_key(s, ObjectClass::SECRET_KEY, &key)?;
                ctx.alive()?;
                s.destroy_object(handle)
                    .map_err(|e| map_err(&ctx.token_label, Some(&key), e))
            })
        })
    }

    /// The labels of the token's secret keys (one per key), sorted.
    pub fn secret_key_labels(&self) -> Result<Vec<String>, HsmError> {
        self.call(move |i| {
            i.with_session(None, |ctx, s| {
                let handles = s
                    .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                    .map_err(|e| map_err(&ctx.token_label, None, e))?;
                let mut labels = Vec::with_capacity(handles.len());
                for handle in handles {
                    let attrs = s
                        .get_attributes(handle, &[AttributeType::Label])
                        .map_err(|e| map_err(&ctx.token_label, None, e))?;
                    for attr in attrs {
                        if let Attribute::Label(bytes) = attr {
                            labels.push(String::from_utf8_lossy(&bytes).into_owned());
                        }
                    }
                }
                labels.sort();
                Ok(labels)
            })
        })
    }

    /// HMAC-SHA256 of `data` under the secret key labelled `key`, computed in the token.
    pub fn hmac_sha256(&self, key: &str, data: &[u8]) -> Result<[u8; 32], HsmError> {
        let (key, data) = (key.to_string(), data.to_vec());
        self.call(move |i| i.hmac_sha256(&key, &data))
    }

    /// Random bytes from the token's generator (C_GenerateRandom).
    pub fn random(&self, len: u32) -> Result<Vec<u8>, HsmError> {
        self.call(move |i| i.random(len))
    }

    /// Test hook: finalizes the PKCS#11 library behind the layer's back, as an HSM restart
    /// would, so that tests can show the layer recovering by itself.
    #[doc(hidden)]
    pub fn fault_finalize_module(&self) {
        self.inner.fault_finalize_module();
    }

    /// Test hook: a call that stays in the current context, on one of its sessions, until the
    /// handle is dropped, as a call into a network HSM's client may stay forever (see
    /// `Context::finalize`). `None` when no context is up or no session is free.
    #[doc(hidden)]
    pub fn fault_hold_call(&self) -> Option<HeldCall> {
        let ctx = match &*self.inner.state.lock().unwrap_or_else(|e| e.into_inner()) {
            State::Up(ctx) => ctx.clone(),
            State::Down { .. } => return None,
        };
        let inner = self.inner.clone();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (entered, is_entered) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let lease = ctx.checkout(&inner.config).ok();
            let call = lease.as_ref().and_then(|_| ctx.enter());
            let _ = entered.send(call.is_some());
            let _ = released.recv();
            drop(call);
            drop(lease);
        });
        if is_entered.recv() != Ok(true) {
            drop(release);
            let _ = thread.join();
            return None;
        }
        Some(HeldCall {
            release: Some(release),
            thread: Some(thread),
        })
    }
}

impl Inner {
    fn token_name(&self) -> String {
        self.config.token.to_string()
    }

    fn is_available(&self) -> bool {
        self.with_session(None, |_, s| {
            s.get_session_info()
                .map(|_| ())
                .map_err(|e| map_err(&self.token_name(), None, e))
        })
        .is_ok()
    }

    /// CKM_ECDSA over a SHA-256 digest; the r‖s result re-encoded as DER.
    fn sign_digests(&self, key: &str, digests: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, HsmError> {
        let started = Instant::now();
        let raws = self.with_session(Some(key), |ctx, s| {
            let handle = ctx.private_key(s, key)?;
            digests
                .iter()
                .map(|digest| {
                    ctx.alive()?;
                    s.sign(&Mechanism::Ecdsa, handle, digest)
                        .map_err(|e| map_err(&ctx.token_label, Some(key), e))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        self.counters
            .signs
            .fetch_add(raws.len() as u64, Ordering::Relaxed);
        self.counters
            .sign_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        raws.iter()
            .map(|raw| {
                let sig = p256::ecdsa::Signature::from_slice(raw).map_err(|e| {
                    HsmError::BadTokenData {
                        token: self.token_name(),
                        key: key.into(),
                        reason: format!("ECDSA signature of {} bytes: {e}", raw.len()),
                    }
                })?;
                Ok(sig.to_der().as_bytes().to_vec())
            })
            .collect()
    }

    fn public_key(&self, key: &str) -> Result<p256::PublicKey, HsmError> {
        let point = self.with_session(Some(key), |ctx, s| {
            let template = [
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(key.as_bytes().to_vec()),
            ];
            let found = s
                .find_objects(&template)
                .map_err(|e| map_err(&ctx.token_label, Some(key), e))?;
            let handle = *found.first().ok_or_else(|| HsmError::KeyNotFound {
                token: ctx.token_label.clone(),
                key: key.into(),
            })?;
            ctx.alive()?;
            let attrs = s
                .get_attributes(handle, &[AttributeType::EcPoint])
                .map_err(|e| map_err(&ctx.token_label, Some(key), e))?;
            match attrs.into_iter().next() {
                Some(Attribute::EcPoint(p)) => Ok(p),
                _ => Err(HsmError::BadTokenData {
                    token: ctx.token_label.clone(),
                    key: key.into(),
                    reason: "no CKA_EC_POINT".into(),
                }),
            }
        })?;
        decode_ec_point(&point).map_err(|reason| HsmError::BadTokenData {
            token: self.token_name(),
            key: key.into(),
            reason,
        })
    }

    fn has_key(&self, key: &str) -> Result<bool, HsmError> {
        self.with_session(Some(key), |ctx, s| {
            Ok(!find_private_keys(ctx, s, key)?.is_empty())
        })
    }

    fn generate_p256(&self, key: &str) -> Result<p256::PublicKey, HsmError> {
        self.with_session_alone(Some(key), |ctx, s| {
            if !find_private_keys(ctx, s, key)?.is_empty() {
                return Err(HsmError::KeyExists {
                    token: ctx.token_label.clone(),
                    key: key.into(),
                });
            }
            let id = s
                .generate_random_vec(16)
                .map_err(|e| map_err(&ctx.token_label, Some(key), e))?;
            let public = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(P256_EC_PARAMS.to_vec()),
                Attribute::Label(key.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::AlwaysAuthenticate(false),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(key.as_bytes().to_vec()),
                Attribute::Id(id),
            ];
            ctx.alive()?;
            s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(|e| map_err(&ctx.token_label, Some(key), e))?;
            Ok(())
        })?;
        self.public_key(key)
    }

    fn generate_hmac_key(&self, key: &str) -> Result<(), HsmError> {
        self.with_session_alone(Some(key), |ctx, s| {
            if !find_keys(ctx, s, ObjectClass::SECRET_KEY, key)?.is_empty() {
                return Err(HsmError::KeyExists {
                    token: ctx.token_label.clone(),
                    key: key.into(),
                });
            }
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(key.as_bytes().to_vec()),
            ];
            ctx.alive()?;
            s.generate_key(&Mechanism::GenericSecretKeyGen, &template)
                .map_err(|e| map_err(&ctx.token_label, Some(key), e))?;
            Ok(())
        })
    }

    fn hmac_sha256(&self, key: &str, data: &[u8]) -> Result<[u8; 32], HsmError> {
        let mac = self.with_session(Some(key), |ctx, s| {
            let handle = ctx.one_key(s, ObjectClass::SECRET_KEY, key)?;
            ctx.alive()?;
            s.sign(&Mechanism::Sha256Hmac, handle, data)
                .map_err(|e| map_err(&ctx.token_label, Some(key), e))
        })?;
        mac.try_into().map_err(|m: Vec<u8>| HsmError::BadTokenData {
            token: self.token_name(),
            key: key.into(),
            reason: format!("an HMAC-SHA256 of {} bytes", m.len()),
        })
    }

    fn key_attributes(&self, key: &str, class: ObjectClass) -> Result<KeyAttributes, HsmError> {
        self.with_session(Some(key), |ctx, s| {
            let handle = if class == ObjectClass::PRIVATE_KEY {
                ctx.private_key(s, key)?
            } else {
                ctx.one_key(s, class, key)?
            };
            let types = [
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::AlwaysSensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::Sign,
                AttributeType::Decrypt,
                AttributeType::Unwrap,
                AttributeType::Derive,
                AttributeType::AlwaysAuthenticate,
            ];
            let attrs = s
                .get_attributes(handle, &types)
                .map_err(|e| map_err(&ctx.token_label, Some(key), e))?;
            let mut out = KeyAttributes {
                private: false,
                sensitive: false,
                always_sensitive: false,
                extractable: true,
                never_extractable: false,
                sign: false,
                decrypt: true,
                unwrap: true,
                derive: true,
                always_authenticate: true,
            };
            for a in attrs {
                match a {
                    Attribute::Private(v) => out.private = v,
                    Attribute::Sensitive(v) => out.sensitive = v,
                    Attribute::AlwaysSensitive(v) => out.always_sensitive = v,
                    Attribute::Extractable(v) => out.extractable = v,
                    Attribute::NeverExtractable(v) => out.never_extractable = v,
                    Attribute::Sign(v) => out.sign = v,
                    Attribute::Decrypt(v) => out.decrypt = v,
                    Attribute::Unwrap(v) => out.unwrap = v,
                    Attribute::Derive(v) => out.derive = v,
                    Attribute::AlwaysAuthenticate(v) => out.always_authenticate = v,
                    _ => {}
                }
            }
            Ok(out)
        })
    }

    fn random(&self, len: u32) -> Result<Vec<u8>, HsmError> {
        self.with_session(None, |ctx, s| {
            s.generate_random_vec(len)
                .map_err(|e| map_err(&ctx.token_label, None, e))
        })
    }

    fn fault_finalize_module(&self) {
        if let State::Up(ctx) = &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            let _calls = ctx.calls.write();
            let _ = ctx.pkcs11.clone().finalize();
        }
    }

    /// Runs `op` on a pooled session. A session-class failure replaces the session and retries
    /// once; a module-class failure rebuilds the whole context and retries once.
    fn with_session<T>(
        &self,
        key: Option<&str>,
        op: impl Fn(&Context, &Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.with_session_as(Access::Shared, key, op)
    }

    /// [`Inner::with_session`] for a call that makes or destroys token objects: no other call
    /// of the context runs meanwhile ([`Context::enter_alone`]).
    fn with_session_alone<T>(
        &self,
        key: Option<&str>,
        op: impl Fn(&Context, &Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.with_session_as(Access::Alone, key, op)
    }

    fn with_session_as<T>(
        &self,
        access: Access,
        key: Option<&str>,
        op: impl Fn(&Context, &Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut last_error = None;
        for _attempt in 0..2 {
            let ctx = self.context()?;
            let mut lease = match ctx.checkout(&self.config) {
                Ok(l) => l,
                // Every session busy is load, not a failed module: the context stays.
                Err(e @ HsmError::Unavailable { .. }) => {
                    if ctx.dead.load(Ordering::SeqCst) {
                        last_error = Some(e);
                        continue; // finalized under us: try the next context
                    }
                    return Err(e);
                }
                Err(e) if e.class() == FailureClass::Module => {
                    self.mark_down(&ctx, &e);
                    last_error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let result = {
                let Some(_call) = ctx.enter_as(access, self.config.alone_wait()) else {
                    drop(lease);
                    if !ctx.dead.load(Ordering::SeqCst) {
                        // A call alone that waited its time for one that has not returned.
                        let reason = "a call in the token has not returned within half the \
                                      call timeout: no key is made or destroyed beside it";
                        tracing::warn!(token = %ctx.token_label, key = ?key, reason, "HSM key not made");
                        return Err(HsmError::Unavailable {
                            token: ctx.token_label.clone(),
                            reason: reason.into(),
                        });
                    }
                    // Another thread's failure finalized this context under us: try the next.
                    last_error = Some(ctx.finalized());
                    continue;
                };
                op(&ctx, lease.session())
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            match err.class() {
                FailureClass::Request => return Err(err),
                FailureClass::Session => {
                    lease.bad = true;
                    drop(lease);
                    ctx.forget_keys();
                    // The login may have gone with the sessions: make sure it holds again.
                    if let Err(e) = ctx.refresh_login(&self.config) {
                        if e.class() == FailureClass::Module {
                            self.mark_down(&ctx, &e);
                        }
                        return Err(e);
                    }
                }
                FailureClass::Module => {
                    lease.bad = true;
                    drop(lease);
                    self.mark_down(&ctx, &err);
                }
            }
            tracing::warn!(token = %ctx.token_label, key = ?key, error = %err, "HSM operation failed; retrying once");
            last_error = Some(err);
        }
        Err(last_error.expect("loop ran at least once"))
    }

    /// The current context, rebuilding it when the module is down and an attempt is due.
    fn context(&self) -> Result<Arc<Context>, HsmError> {
        let backoff = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *state {
                State::Up(ctx) => return Ok(ctx.clone()),
                State::Down {
                    reason,
                    next_attempt,
                    backoff,
                    busy,
                } => {
                    if *busy || Instant::now() < *next_attempt {
                        return Err(HsmError::Unavailable {
                            token: self.token_name(),
                            reason: reason.clone(),
                        });
                    }
                    *busy = true;
                    *backoff
                }
            }
        };
        let _clear = ClearBusy(&self.state);
        // Outside the lock: a network HSM's C_Initialize may take as long as its server likes.
        let built = Context::build(&self.config);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match built {
            Ok(ctx) => {
                tracing::info!(token = %self.token_name(), "HSM context re-initialized");
                let ctx = Arc::new(ctx);
                *state = State::Up(ctx.clone());
                self.counters.recoveries.fetch_add(1, Ordering::Relaxed);
                Ok(ctx)
            }
            Err(e) => {
                let next = (backoff * 2).min(MAX_BACKOFF);
                tracing::warn!(token = %self.token_name(), error = %e, retry_in_ms = next.as_millis() as u64, "HSM still unavailable");
                *state = State::Down {
                    reason: e.to_string(),
                    next_attempt: Instant::now() + backoff,
                    backoff: next,
                    busy: false,
                };
                Err(HsmError::Unavailable {
                    token: self.token_name(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Finalizes a failed context (once, whoever sees the failure first).
    fn mark_down(&self, failed: &Arc<Context>, error: &HsmError) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let State::Up(current) = &*state {
            if current.generation != failed.generation {
                return; // someone already replaced it
            }
        } else {
            return;
        }
        tracing::warn!(token = %failed.token_label, error = %error, "HSM module failed; re-initializing");
        *state = State::Down {
            reason: error.to_string(),
            next_attempt: Instant::now(),
            backoff: FIRST_BACKOFF,
            busy: true,
        };
        drop(state);
        let _clear = ClearBusy(&self.state);
        // Outside the lock: finalize waits for the calls still in the failed module.
        failed.finalize(self.config.finalize_wait());
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let State::Up(ctx) = &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            ctx.finalize(self.config.finalize_wait());
        }
    }
}

impl Context {
    fn build(config: &HsmConfig) -> Result<Context, HsmError> {
        let label = config.token.to_string();
        let pkcs11 = load_module(config)?;
        let built = (|| {
            let slot = find_token(&pkcs11, &config.token, &config.module)?.ok_or_else(|| {
                HsmError::TokenNotFound {
                    token: label.clone(),
                    module: config.module.display().to_string(),
                }
            })?;
            let login_session = pkcs11
                .open_rw_session_no_drop(slot)
                .map_err(|e| map_err(&label, None, e))?;
            let ctx = Context {
                generation: GENERATION.fetch_add(1, Ordering::SeqCst),
                pkcs11: pkcs11.clone(),
                slot,
                login_session: Mutex::new(login_session),
                pool: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                    capacity: config.sessions.max(1),
                }),
                pool_freed: Condvar::new(),
                keys: Mutex::new(HashMap::new()),
                calls: RwLock::new(()),
                dead: AtomicBool::new(false),
                token_label: label.clone(),
            };
            LIVE_CONTEXTS.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = ctx.login(config) {
                ctx.finalize(None); // never published: no call can be in it
                return Err(e);
            }
            Ok(ctx)
        })();
        if built.is_err() && LIVE_CONTEXTS.load(Ordering::SeqCst) == 0 {
            let _ = pkcs11.finalize();
        }
        built
    }

    fn login(&self, config: &HsmConfig) -> Result<(), HsmError> {
        let pin = config
            .pin
            .read()
            .map_err(|reason| HsmError::PinUnavailable {
                token: self.token_label.clone(),
                source_name: config.pin.describe(),
                reason,
            })?;
        let auth = AuthPin::from(pin.as_str());
        drop(pin);
        let session = self.login_session.lock().unwrap_or_else(|e| e.into_inner());
        self.alive()?; // it may have been finalized while this waited for the session
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinLocked
                | RvError::PinExpired),
                _,
            )) => Err(HsmError::WrongPin {
                token: self.token_label.clone(),
                code: return_code(rv),
            }),
            Err(e) => Err(map_err(&self.token_label, None, e)),
        }
    }

    /// Re-opens the login session if it went stale, and logs in again if needed.
    fn refresh_login(&self, config: &HsmConfig) -> Result<(), HsmError> {
        let Some(_call) = self.enter() else {
            return Err(self.finalized());
        };
        {
            let mut session = self.login_session.lock().unwrap_or_else(|e| e.into_inner());
            self.alive()?; // it may have been finalized while this waited for the session
            if session.get_session_info().is_err() {
                // Forgotten, not closed: it is already gone.
                *session = self
                    .pkcs11
                    .open_rw_session_no_drop(self.slot)
                    .map_err(|e| map_err(&self.token_label, None, e))?;
            }
        }
        self.login(config)
    }

    fn checkout(self: &Arc<Self>, config: &HsmConfig) -> Result<Lease, HsmError> {
        let deadline = Instant::now() + config.checkout_timeout;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            self.alive()?;
            if let Some(session) = pool.idle.pop() {
                return Ok(Lease {
                    ctx: self.clone(),
                    session: Some(session),
                    bad: false,
                });
            }
            if pool.open < pool.capacity {
                pool.open += 1;
                drop(pool);
                let opened = match self.enter() {
                    Some(_call) => self
                        .pkcs11
                        .open_rw_session_no_drop(self.slot)
                        .map_err(|e| map_err(&self.token_label, None, e)),
                    None => Err(self.finalized()),
                };
                return match opened {
                    Ok(session) => Ok(Lease {
                        ctx: self.clone(),
                        session: Some(session),
                        bad: false,
                    }),
                    Err(e) => {
                        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                        pool.open -= 1;
                        drop(pool);
                        self.pool_freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HsmError::Unavailable {
                    token: self.token_label.clone(),
                    reason: format!("all {} sessions busy", pool.capacity),
                });
            }
            pool = self
                .pool_freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn private_key(&self, session: &Session, key: &str) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(*h);
        }
        let handle = self.one_key(session, ObjectClass::PRIVATE_KEY, key)?;
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), handle);
        Ok(handle)
    }

    /// The one key of `class` labelled `key` (none, or several, is an error).
    fn one_key(
        &self,
        session: &Session,
        class: ObjectClass,
        key: &str,
    ) -> Result<ObjectHandle, HsmError> {
        let found = find_keys(self, session, class, key)?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(HsmError::KeyNotFound {
                token: self.token_label.clone(),
                key: key.into(),
            }),
            _ => Err(HsmError::BadTokenData {
                token: self.token_label.clone(),
                key: key.into(),
                reason: format!("{} keys of one class share this label", found.len()),
            }),
        }
    }

    fn forget_keys(&self) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Enters a PKCS#11 call on this context: `None` once the context is finalized (or being
    /// finalized). Not to be nested: a call waiting to run alone ([`Context::enter_alone`])
    /// would block the inner one (the lock is fair).
    fn enter(&self) -> Option<RwLockReadGuard<'_, ()>> {
        let call = self.calls.read();
        (!self.dead.load(Ordering::SeqCst)).then_some(call)
    }

    /// Like [`Context::enter`], but alone: it waits for the calls in flight, and no other
    /// call of this context starts until it ends. For the calls that make or destroy token
    /// objects: SoftHSM's file object store is not safe for them while another thread reads
    /// objects (SoftHSMv2 issue 573; seen here: C_GenerateKeyPair and C_GenerateKey failed
    /// with CKR_GENERAL_ERROR or CKR_TEMPLATE_INCONSISTENT beside a signing thread, leaving a
    /// half-made object without its label, and the failure took the whole layer down).
    /// While it waits, new calls wait behind it (the lock is fair), but only for `wait`
    /// ([`HsmConfig::alone_wait`]; `None`: as long as it takes): a call that never returns
    /// must not hold every other call up with it for long. Within this process only: another process on the same
    /// SoftHSM token (`ca upgrade`, a second server) is not held off.
    fn enter_alone(&self, wait: Option<Duration>) -> Option<RwLockWriteGuard<'_, ()>> {
        let call = match wait {
            None => self.calls.write(),
            Some(wait) => self.calls.try_write_for(wait)?,
        };
        (!self.dead.load(Ordering::SeqCst)).then_some(call)
    }

    fn enter_as(&self, access: Access, wait: Option<Duration>) -> Option<CallGuard<'_>> {
        match access {
            Access::Shared => self.enter().map(CallGuard::Shared),
            Access::Alone => self.enter_alone(wait).map(CallGuard::Alone),
        }
    }

    /// Checked between the calls of one operation: a context finalized meanwhile (under a
    /// call that outlived the call timeout) gets no further call, whose handles might by now
    /// belong to the next context.
    fn alive(&self) -> Result<(), HsmError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(self.finalized());
        }
        Ok(())
    }

    /// What a caller is told when the context it holds was finalized under it.
    fn finalized(&self) -> HsmError {
        HsmError::Unavailable {
            token: self.token_label.clone(),
            reason: "the PKCS#11 module is being re-initialized".into(),
        }
    }

    /// Ends the context: its sessions are forgotten and, with the last live context, the module
    /// is finalized. Calls already in the module are waited for, but only for `wait` (`None`:
    /// as long as they take). A call that outlives it has been abandoned by its caller at the
    /// call timeout, and it may never return: p11-kit's client, whose server died between a
    /// reply's header and its body, leaves the other threads waiting for that reply on a
    /// condition variable that nobody signals again (seen here). Waiting for it would keep the
    /// module from ever being re-initialized, so C_Finalize then runs under it; its thread is
    /// left where it is.
    fn finalize(&self, wait: Option<Duration>) {
        if self.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        let drained = match wait {
            None => Some(self.calls.write()),
            Some(wait) => self.drain_calls(wait),
        };
        if drained.is_none() {
            tracing::error!(
                token = %self.token_label,
                waited_ms = wait.unwrap_or_default().as_millis() as u64,
                "PKCS#11 calls of the failed context have not returned; finalizing the module \
                 under them (their threads are abandoned)"
            );
        }
        // Idle sessions are forgotten, not closed: after C_Finalize their handles mean nothing.
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .idle
            .clear();
        // Callers waiting for a session learn that there will be none.
        self.pool_freed.notify_all();
        if LIVE_CONTEXTS.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = self.pkcs11.clone().finalize();
        }
    }

    /// Waits up to `wait` for the calls in flight to end (new ones see `dead` and leave).
    fn drain_calls(&self, wait: Duration) -> Option<RwLockWriteGuard<'_, ()>> {
        let deadline = Instant::now() + wait;
        loop {
            match self.calls.try_write() {
                Some(all) => return Some(all),
                None if Instant::now() >= deadline => return None,
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

fn find_private_keys(ctx: &Context, s: &Session, key: &str) -> Result<Vec<ObjectHandle>, HsmError> {
    find_keys(ctx, s, ObjectClass::PRIVATE_KEY, key)
}

fn find_keys(
    ctx: &Context,
    s: &Session,
    class: ObjectClass,
    key: &str,
) -> Result<Vec<ObjectHandle>, HsmError> {
    let template = [
        Attribute::Class(class),
        Attribute::Label(key.as_bytes().to_vec()),
    ];
    s.find_objects(&template)
        .map_err(|e| map_err(&ctx.token_label, Some(key), e))
}

fn load_module(config: &HsmConfig) -> Result<Pkcs11, HsmError> {
    let module = config.module.display().to_string();
    let pkcs11 = Pkcs11::new(&config.module).map_err(|e| HsmError::ModuleLoad {
        module: module.clone(),
        reason: e.to_string(),
    })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => Ok(pkcs11),
        // Another context of this process initialized the module: share it. (A process should
        // hold one `Hsm` per module; C_Finalize runs when the last context goes.)
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(pkcs11),
        Err(e) => Err(map_err(&config.token.to_string(), None, e)),
    }
}

fn find_token(
    pkcs11: &Pkcs11,
    selector: &TokenSelector,
    _module: &std::path::Path,
) -> Result<Option<Slot>, HsmError> {
    let label = selector.to_string();
    // Each slot's token info is read on its own: one unreadable token (SoftHSM rewriting its
    // files) must not hide the others.
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| map_err(&label, None, e))?;
    for slot in slots {
        let info = match pkcs11.get_token_info(slot) {
            Ok(i) => i,
            Err(_) => continue,
        };
        if info.token_initialized() && selector.matches(info.label(), info.serial_number()) {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

/// Creates and initializes a token in the first free slot (C_InitToken with the SO PIN, then
/// C_InitPIN with the user PIN), both PINs read from their sources. Returns false when a token
/// with this label already exists (nothing is changed).
pub fn init_token(
    module: &std::path::Path,
    label: &str,
    so_pin: &PinSource,
    user_pin: &PinSource,
) -> Result<bool, HsmError> {
    let selector = TokenSelector::Label(label.to_string());
    let config = HsmConfig {
        module: module.to_path_buf(),
        token: selector.clone(),
        pin: user_pin.clone(),
        sessions: 1,
        checkout_timeout: Duration::from_secs(5),
        call_timeout: Duration::ZERO,
    };
    // A token being rewritten by another process can be missed by one scan (SoftHSM): only
    // create one when several fresh scans agree that it is absent, or two would share a label.
    for _ in 0..TOKEN_ABSENT_SCANS {
        let pkcs11 = load_module(&config)?;
        let found = find_token(&pkcs11, &selector, module);
        let _ = pkcs11.finalize();
        if let Ok(Some(_)) = found {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let pkcs11 = load_module(&config)?;
    let result = (|| {
        if find_token(&pkcs11, &selector, module)?.is_some() {
            return Ok(false);
        }
        let read = |src: &PinSource| {
            src.read().map_err(|reason| HsmError::PinUnavailable {
                token: label.into(),
                source_name: src.describe(),
                reason,
            })
        };
        let free = pkcs11
            .get_slots_with_token()
            .map_err(|e| map_err(label, None, e))?
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .map(|i| !i.token_initialized())
                    .unwrap_or(false)
            })
            .ok_or_else(|| HsmError::TokenNotFound {
                token: "(a free slot)".into(),
                module: module.display().to_string(),
            })?;
        let so = AuthPin::from(read(so_pin)?.as_str());
        pkcs11
            .init_token(free, &so, label)
            .map_err(|e| map_err(label, None, e))?;
        // SoftHSM moves a new token to a fresh slot id: find it again by label.
        let slot =
            find_token(&pkcs11, &selector, module)?.ok_or_else(|| HsmError::TokenNotFound {
                token: label.into(),
                module: module.display().to_string(),
            })?;
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(|e| map_err(label, None, e))?;
        session
            .login(UserType::So, Some(&so))
            .map_err(|e| map_err(label, None, e))?;
        let user = AuthPin::from(read(user_pin)?.as_str());
        session
            .init_pin(&user)
            .map_err(|e| map_err(label, None, e))?;
        let _ = session.logout();
        Ok(true)
    })();
    let _ = pkcs11.finalize();
    result
}

/// CKA_EC_POINT is a DER OCTET STRING around the SEC1 point on most tokens; some return it bare.
fn decode_ec_point(raw: &[u8]) -> Result<p256::PublicKey, String> {
    use der::Decode;
    let point = match der::asn1::OctetString::from_der(raw) {
        Ok(os) => os.as_bytes().to_vec(),
        Err(_) => raw.to_vec(),
    };
    p256::PublicKey::from_sec1_bytes(&point).map_err(|e| format!("CKA_EC_POINT: {e}"))
}

fn return_code(rv: RvError) -> ReturnCode {
    // RvError's Debug is the CKR_ name in CamelCase: DeviceError -> CKR_DEVICE_ERROR.
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for ch in camel.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    ReturnCode(out)
}

fn classify(rv: RvError) -> FailureClass {
    match rv {
        RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::ObjectHandleInvalid
        | RvError::KeyHandleInvalid
        | RvError::UserNotLoggedIn => FailureClass::Session,
        RvError::DeviceError
        | RvError::DeviceRemoved
        | RvError::DeviceMemory
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::CryptokiNotInitialized
        | RvError::GeneralError
        | RvError::SlotIdInvalid => FailureClass::Module,
        _ => FailureClass::Request,
    }
}

fn map_err(token: &str, key: Option<&str>, e: CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, function) => HsmError::Pkcs11 {
            token: token.into(),
            key: key.map(Into::into),
            function: function_name(function),
            code: return_code(rv),
            class: classify(rv),
        },
        other => HsmError::Pkcs11 {
            token: token.into(),
            key: key.map(Into::into),
            function: "(library)".into(),
            code: ReturnCode(other.to_string()),
            class: FailureClass::Request,
        },
    }
}

fn function_name(f: Function) -> String {
    format!("C_{f:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::AssertUnwindSafe;

    fn busy(state: &Mutex<State>) -> bool {
        matches!(&*state.lock().unwrap(), State::Down { busy: true, .. })
    }

    #[test]
    fn a_thread_that_panics_while_busy_leaves_the_layer_free_to_try_again() {
        let state = Mutex::new(State::Down {
            reason: "test".into(),
            next_attempt: Instant::now(),
            backoff: FIRST_BACKOFF,
            busy: true,
        });
        let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _clear = ClearBusy(&state);
            panic!("the module's C_Initialize panicked");
        }));
        assert!(unwound.is_err());
        assert!(!busy(&state), "busy cleared on unwind");
    }
}
