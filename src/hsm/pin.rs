//! Where a PIN comes from. It is read at each login (also after a recovery) and zeroized at once.

use std::path::PathBuf;

use zeroize::Zeroizing;

/// The source of a token PIN: a file (mode 0600) or an environment variable. Never argv.
#[derive(Debug, Clone)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
}

impl PinSource {
    /// A description safe for errors and logs (names the source, never the PIN).
    pub fn describe(&self) -> String {
        match self {
            PinSource::File(p) => format!("file {}", p.display()),
            PinSource::Env(v) => format!("environment variable {v}"),
        }
    }

    /// Reads the PIN; trailing newline and surrounding blanks are dropped.
    pub fn read(&self) -> Result<Zeroizing<String>, String> {
        let raw = match self {
            PinSource::File(p) => {
                Zeroizing::new(std::fs::read_to_string(p).map_err(|e| e.kind().to_string())?)
            }
            PinSource::Env(v) => {
                Zeroizing::new(std::env::var(v).map_err(|_| "not set".to_string())?)
            }
        };
        let pin = Zeroizing::new(raw.trim().to_string());
        if pin.is_empty() {
            return Err("empty".into());
        }
        Ok(pin)
    }
}
