//! Naming a token: a plain label, or an RFC 7512 `pkcs11:` URI (`token=` and `serial=` path
//! attributes; others are ignored here, PIN attributes are refused).

use std::fmt;

/// Which token to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Uri {
        token: Option<String>,
        serial: Option<String>,
    },
}

impl TokenSelector {
    /// Parses a label or a `pkcs11:` URI.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix("pkcs11:") else {
            if s.is_empty() {
                return Err("empty token label".into());
            }
            return Ok(TokenSelector::Label(s.to_string()));
        };
        let path = rest.split('?').next().unwrap_or("");
        let (mut token, mut serial) = (None, None);
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| format!("PKCS#11 URI attribute {attr:?} has no '='"))?;
            let value = percent_decode(value)?;
            match name {
                "token" => token = Some(value),
                "serial" => serial = Some(value),
                "pin-value" | "pin-source" => {
                    return Err(
                        "a PIN must not be written in the token URI; use [hsm].pin_file".into(),
                    )
                }
                _ => {}
            }
        }
        if rest.contains("pin-value=") {
            return Err("a PIN must not be written in the token URI; use [hsm].pin_file".into());
        }
        if token.is_none() && serial.is_none() {
            return Err("PKCS#11 URI names neither token= nor serial=".into());
        }
        Ok(TokenSelector::Uri { token, serial })
    }

    /// Does a token with this (blank-trimmed) label and serial match?
    pub fn matches(&self, label: &str, serial: &str) -> bool {
        match self {
            TokenSelector::Label(l) => l == label.trim_end(),
            TokenSelector::Uri { token, serial: s } => {
                token.as_deref().is_none_or(|t| t == label.trim_end())
                    && s.as_deref().is_none_or(|x| x == serial.trim_end())
            }
        }
    }
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => f.write_str(l),
            TokenSelector::Uri { token, serial } => {
                f.write_str("pkcs11:")?;
                let mut sep = "";
                if let Some(t) = token {
                    write!(f, "token={t}")?;
                    sep = ";";
                }
                if let Some(s) = serial {
                    write!(f, "{sep}serial={s}")?;
                }
                Ok(())
            }
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(
                u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent escape in {s:?}"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_label_is_a_label() {
        assert_eq!(
            TokenSelector::parse("signet-dev").unwrap(),
            TokenSelector::Label("signet-dev".into())
        );
    }

    #[test]
    fn uri_token_and_serial_are_decoded() {
        let s = TokenSelector::parse("pkcs11:token=My%20Token;serial=abc;object=x").unwrap();
        assert!(s.matches("My Token", "abc"));
        assert!(!s.matches("My Token", "abd"));
    }

    #[test]
    fn uri_with_pin_is_refused() {
        assert!(TokenSelector::parse("pkcs11:token=t?pin-value=1234").is_err());
    }

    #[test]
    fn uri_without_token_or_serial_is_refused() {
        assert!(TokenSelector::parse("pkcs11:object=x").is_err());
    }
}
