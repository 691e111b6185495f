//! The HSM layer's one error type: which token, which key, which PKCS#11 return code.

use std::fmt;

/// A PKCS#11 return code, kept as the name the standard gives it (`CKR_...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnCode(pub String);

impl fmt::Display for ReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What went wrong in the HSM layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded (wrong path, missing library).
    #[error("cannot load PKCS#11 module {module}: {reason}; check [hsm].module in the config")]
    ModuleLoad { module: String, reason: String },

    /// No token with this label (or URI) is present.
    #[error("no token labelled {token:?} in PKCS#11 module {module}; run softhsm/setup.sh or check [hsm].token")]
    TokenNotFound { token: String, module: String },

    /// The PIN could not be read from its file or environment variable.
    #[error("cannot read the PIN for token {token:?} from {source_name}: {reason}")]
    PinUnavailable {
        token: String,
        source_name: String,
        reason: String,
    },

    /// The token refused the PIN.
    #[error(
        "token {token:?} refused the PIN ({code}); check the PIN file named by [hsm].pin_file"
    )]
    WrongPin { token: String, code: ReturnCode },

    /// A key that should be in the token is not.
    #[error("no key labelled {key:?} in token {token:?}")]
    KeyNotFound { token: String, key: String },

    /// A key with this label already exists (generation refuses to make a second one).
    #[error("a key labelled {key:?} already exists in token {token:?}")]
    KeyExists { token: String, key: String },

    /// The module is down or being re-initialized; try again shortly.
    #[error("HSM token {token:?} is unavailable ({reason}); retry shortly")]
    Unavailable { token: String, reason: String },

    /// A PKCS#11 call failed.
    #[error("PKCS#11 {function} failed with {code} (token {token:?}{key})", key = key.as_deref().map(|k| format!(", key {k:?}")).unwrap_or_default())]
    Pkcs11 {
        token: String,
        key: Option<String>,
        function: String,
        code: ReturnCode,
        class: FailureClass,
    },

    /// The token returned something this layer cannot use (a malformed point, a bad signature length).
    #[error("token {token:?} returned unusable data for key {key:?}: {reason}")]
    BadTokenData {
        token: String,
        key: String,
        reason: String,
    },
}

/// What a failed PKCS#11 call says about the state of the connection to the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The session or an object handle went stale: a new session (and key lookup) may succeed.
    Session,
    /// The module or device failed: only a new C_Initialize may help.
    Module,
    /// The request itself failed (bad mechanism, bad data): retrying does not help.
    Request,
}

impl HsmError {
    /// The PKCS#11 return code, when the error carries one.
    pub fn return_code(&self) -> Option<&str> {
        match self {
            HsmError::Pkcs11 { code, .. } | HsmError::WrongPin { code, .. } => Some(&code.0),
            _ => None,
        }
    }

    /// True when the service should answer "try later" (503) rather than fail the request for good.
    pub fn is_unavailable(&self) -> bool {
        match self {
            HsmError::Unavailable { .. } => true,
            HsmError::Pkcs11 { class, .. } => *class != FailureClass::Request,
            _ => false,
        }
    }

    pub(crate) fn class(&self) -> FailureClass {
        match self {
            HsmError::Pkcs11 { class, .. } => *class,
            HsmError::Unavailable { .. } => FailureClass::Module,
            HsmError::KeyNotFound { .. } => FailureClass::Session,
            _ => FailureClass::Request,
        }
    }
}
