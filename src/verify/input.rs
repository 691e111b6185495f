//! What a caller hands in as "the signature": a CMS SignedData (DER, PEM or bare base64) or a
//! JWS (compact or JSON). `decode_signature` only tells them apart and undoes the transport
//! encoding; `cms::examine_cms` and `jws::examine_jws` read them.
//!
//! Also home of a small DER TLV reader that the CMS layer uses to find raw bytes (signed
//! attributes as signed, certificates in the order sent), to rewrite BER (indefinite lengths)
//! as definite-length encoding, and to refuse absurd nesting before any recursive decoder sees
//! the input.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};

use super::evidence::FormatError;

/// Largest signature accepted, in bytes (DER, PEM, base64 or JWS).
pub const MAX_SIGNATURE_BYTES: usize = 1024 * 1024;

/// Deepest nesting of constructed DER values accepted (a CMS with certificates needs about 12).
pub const MAX_DER_DEPTH: usize = 64;

/// Most signers one signature may have. Each costs store reads, a report entry and an audit
/// event even when its own signature fails: without a bound, a request of a few kilobytes of
/// SignerInfos naming a known certificate would write hundreds of audit events.
pub const MAX_SIGNERS: usize = 16;

/// The error for a signature with more than [`MAX_SIGNERS`] signers.
pub(crate) fn too_many_signers(n: usize) -> FormatError {
    ferr(format!(
        "the signature has {n} signers; Signet reads at most {MAX_SIGNERS}"
    ))
}

/// A signature, decoded from its transport encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureInput {
    /// CMS SignedData / PKCS#7 ContentInfo, DER.
    Cms(Vec<u8>),
    /// JWS, compact serialization or JSON (flattened or general), as text.
    Jws(String),
}

/// PEM labels accepted for a CMS SignedData.
const CMS_PEM_LABELS: [&str; 3] = ["PKCS7", "CMS", "SIGNED DATA"];

/// Tells the form of a signature and decodes its transport encoding:
/// - DER (first byte 0x30) → `Cms`;
/// - PEM with label `PKCS7`, `CMS` or `SIGNED DATA` → `Cms`;
/// - a JSON object with `signature` or `signatures` → `Jws`;
/// - three base64url parts separated by dots (the middle one may be empty) → `Jws`;
/// - bare base64 (standard or URL-safe alphabet, padding optional, whitespace ignored) of DER →
///   `Cms`; of a PEM or JWS text → that (one level only).
///
/// Anything else, and anything over [`MAX_SIGNATURE_BYTES`], is a `FormatError`. Never panics.
pub fn decode_signature(bytes: &[u8]) -> Result<SignatureInput, FormatError> {
    decode_level(bytes, 0)
}

fn decode_level(bytes: &[u8], level: u8) -> Result<SignatureInput, FormatError> {
    if bytes.len() > MAX_SIGNATURE_BYTES {
        return Err(ferr(format!(
            "signature is {} bytes, more than the {MAX_SIGNATURE_BYTES} accepted",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Err(ferr("signature is empty"));
    }
    if bytes[0] == 0x30 {
        return Ok(SignatureInput::Cms(bytes.to_vec()));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ferr("signature is neither DER (SEQUENCE) nor text (not UTF-8)"))?;
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Err(ferr("signature is blank"));
    }
    if text.starts_with("-----BEGIN ") {
        return decode_pem(text).map(SignatureInput::Cms);
    }
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ferr(format!("signature looks like JSON but is not: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ferr("JSON signature is not an object"))?;
        if !obj.contains_key("signature") && !obj.contains_key("signatures") {
            return Err(ferr(
                "JSON signature has neither `signature` nor `signatures` (not a JWS)",
            ));
        }
        return Ok(SignatureInput::Jws(text.to_string()));
    }
    if text.contains('.') {
        check_compact_shape(text)?;
        return Ok(SignatureInput::Jws(text.to_string()));
    }
    // Bare base64.
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let decoded = decode_base64_any(&compact)
        .ok_or_else(|| ferr("signature is not DER, PEM, JWS, nor base64"))?;
    match decoded.first() {
        Some(0x30) => Ok(SignatureInput::Cms(decoded)),
        Some(_) if level == 0 => decode_level(&decoded, 1).map_err(|e| {
            ferr(format!(
                "signature is base64 of something that is not a signature: {}",
                e.0
            ))
        }),
        _ => Err(ferr("base64 signature does not hold a DER SEQUENCE")),
    }
}

/// Compact JWS: exactly three parts, base64url alphabet, header and signature not empty.
fn check_compact_shape(text: &str) -> Result<(), FormatError> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 3 {
        return Err(ferr(format!(
            "compact JWS has {} parts separated by dots, not 3",
            parts.len()
        )));
    }
    if parts[0].is_empty() {
        return Err(ferr("compact JWS with an empty header"));
    }
    // The payload is not checked: with RFC 7797 `b64: false` it is the raw payload. The
    // signature may be empty (`alg: none`), which `examine_jws` answers.
    if ![parts[0], parts[2]]
        .iter()
        .all(|p| p.bytes().all(is_base64url_byte))
    {
        return Err(ferr("compact JWS header or signature is not base64url"));
    }
    Ok(())
}

fn is_base64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn decode_pem(text: &str) -> Result<Vec<u8>, FormatError> {
    let mut lines = text.lines().map(str::trim);
    let first = lines.next().unwrap_or_default();
    let label = first
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| ferr("malformed PEM header line"))?;
    if !CMS_PEM_LABELS.contains(&label) {
        return Err(ferr(format!(
            "PEM label {label:?} is not a signature (expected PKCS7, CMS or SIGNED DATA)"
        )));
    }
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        if line.starts_with("-----") {
            return Err(ferr("PEM END line does not match its BEGIN line"));
        }
        // RFC 1421 style headers (Proc-Type: ...) are not part of the data.
        if line.contains(':') {
            continue;
        }
        body.push_str(line);
    }
    if !ended {
        return Err(ferr("PEM without its END line"));
    }
    let der = decode_base64_any(&body).ok_or_else(|| ferr("PEM body is not base64"))?;
    if der.first() != Some(&0x30) {
        return Err(ferr("PEM body does not hold a DER SEQUENCE"));
    }
    Ok(der)
}

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(false);
/// Standard alphabet, padding optional.
pub(crate) const B64_STD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
/// URL-safe alphabet, padding optional.
pub(crate) const B64_URL: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Base64 in either alphabet, padding optional; no whitespace.
fn decode_base64_any(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() {
        return None;
    }
    B64_STD.decode(s).or_else(|_| B64_URL.decode(s)).ok()
}

pub(crate) fn ferr(msg: impl Into<String>) -> FormatError {
    FormatError(msg.into())
}

// ---------------------------------------------------------------------------------------------
// DER TLV reader
// ---------------------------------------------------------------------------------------------

/// One DER value: its first identifier octet, its value octets and its whole encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    /// First identifier octet (class, constructed bit, tag number < 31).
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// The values this constructed value holds, in order.
    pub fn children(&self) -> Result<Vec<Tlv<'a>>, FormatError> {
        let mut out = Vec::new();
        let mut rest = self.value;
        while !rest.is_empty() {
            let (t, r) = read_tlv(rest)?;
            out.push(t);
            rest = r;
        }
        Ok(out)
    }
}

/// The header of a BER/DER value: identifier length, first identifier octet, value length
/// (`None`: indefinite), header length.
struct Header {
    id_len: usize,
    first: u8,
    len: Option<usize>,
    hdr_len: usize,
}

fn read_ber_header(input: &[u8]) -> Result<Header, FormatError> {
    let first = *input
        .first()
        .ok_or_else(|| ferr("DER: truncated (no tag)"))?;
    let mut pos = 1;
    if first & 0x1f == 0x1f {
        // High tag number form: base-128 digits, at most 4 of them.
        loop {
            let b = *input.get(pos).ok_or_else(|| ferr("DER: truncated tag"))?;
            pos += 1;
            if b & 0x80 == 0 {
                break;
            }
            if pos > 5 {
                return Err(ferr("DER: tag number too long"));
            }
        }
    }
    let id_len = pos;
    let l0 = *input
        .get(pos)
        .ok_or_else(|| ferr("DER: truncated (no length)"))?;
    pos += 1;
    let len = if l0 < 0x80 {
        Some(l0 as usize)
    } else if l0 == 0x80 {
        None
    } else {
        let n = (l0 & 0x7f) as usize;
        if n > 4 {
            return Err(ferr("DER: length field longer than 4 bytes"));
        }
        let bytes = input
            .get(pos..pos + n)
            .ok_or_else(|| ferr("DER: truncated length"))?;
        pos += n;
        Some(bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
    };
    Ok(Header {
        id_len,
        first,
        len,
        hdr_len: pos,
    })
}

/// Reads the header of the value at the start of `input`: (header length, first identifier
/// octet, value length). Definite lengths only.
fn read_header(input: &[u8]) -> Result<(usize, u8, usize), FormatError> {
    let h = read_ber_header(input)?;
    let len = h
        .len
        .ok_or_else(|| ferr("DER: indefinite length (BER) where DER is required"))?;
    Ok((h.hdr_len, h.first, len))
}

fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Rewrites BER as definite-length encoding: indefinite lengths become definite, every length
/// is written in its shortest form, and constructed OCTET STRINGs (streamed eContent) become
/// one primitive OCTET STRING. DER comes out unchanged. One value must span all of `input`;
/// constructed values may nest at most `max_depth` deep (the recursion is bounded by it).
///
/// Java toolkits (BouncyCastle's `CMSSignedData.getEncoded()`) and `openssl cms -stream` send
/// SignedData this way; the signed attributes inside are DER in either case.
pub(crate) fn normalize_ber(
    input: &[u8],
    max_depth: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, FormatError> {
    if input.is_empty() {
        return Err(ferr("DER: empty input"));
    }
    // Most signatures are DER already: the rewrite would copy them unchanged.
    if let Ok(shape) = crate::der_limits::check_shape(input, max_depth) {
        if shape.minimal_lengths {
            return Ok(std::borrow::Cow::Borrowed(input));
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let used = normalize_value(input, 0, max_depth, &mut out)?;
    if used != input.len() {
        return Err(ferr(format!(
            "DER: {} bytes of trailing data after the value",
            input.len() - used
        )));
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Normalizes the value at the start of `input` into `out`; returns the bytes it took.
fn normalize_value(
    input: &[u8],
    depth: usize,
    max_depth: usize,
    out: &mut Vec<u8>,
) -> Result<usize, FormatError> {
    let h = read_ber_header(input)?;
    let past_end = || ferr("DER: value runs past the end of its container");
    if h.first & 0x20 == 0 {
        let len = h
            .len
            .ok_or_else(|| ferr("BER: primitive value with an indefinite length"))?;
        let end = h
            .hdr_len
            .checked_add(len)
            .filter(|e| *e <= input.len())
            .ok_or_else(past_end)?;
        out.extend_from_slice(&input[..h.id_len]);
        push_length(out, len);
        out.extend_from_slice(&input[h.hdr_len..end]);
        return Ok(end);
    }
    if depth >= max_depth {
        return Err(ferr(format!(
            "DER: nested more than {max_depth} levels deep"
        )));
    }
    let mut body = Vec::new();
    let consumed = match h.len {
        Some(len) => {
            let end = h
                .hdr_len
                .checked_add(len)
                .filter(|e| *e <= input.len())
                .ok_or_else(past_end)?;
            let mut pos = h.hdr_len;
            while pos < end {
                pos += normalize_value(&input[pos..end], depth + 1, max_depth, &mut body)?;
            }
            end
        }
        None => {
            let mut pos = h.hdr_len;
            loop {
                let rest = &input[pos..];
                if rest.starts_with(&[0, 0]) {
                    break pos + 2;
                }
                if rest.is_empty() {
                    return Err(ferr("BER: indefinite length without its end-of-contents"));
                }
                pos += normalize_value(rest, depth + 1, max_depth, &mut body)?;
            }
        }
    };
    if h.first == 0x24 {
        // Constructed OCTET STRING: its (already flattened) segments, joined.
        let mut data = Vec::with_capacity(body.len());
        let mut rest = body.as_slice();
        while !rest.is_empty() {
            let (seg, r) = read_tlv(rest)?;
            if seg.tag != 0x04 {
                return Err(ferr("BER: constructed OCTET STRING holding another type"));
            }
            data.extend_from_slice(seg.value);
            rest = r;
        }
        out.push(0x04);
        push_length(out, data.len());
        out.extend_from_slice(&data);
    } else {
        out.extend_from_slice(&input[..h.id_len]);
        push_length(out, body.len());
        out.extend_from_slice(&body);
    }
    Ok(consumed)
}

/// Reads one value from the start of `input`; returns it and what follows.
pub(crate) fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), FormatError> {
    let (hlen, tag, len) = read_header(input)?;
    let end = hlen
        .checked_add(len)
        .filter(|e| *e <= input.len())
        .ok_or_else(|| {
            ferr(format!(
                "DER: value of {len} bytes runs past the end of the input"
            ))
        })?;
    Ok((
        Tlv {
            tag,
            value: &input[hlen..end],
            raw: &input[..end],
        },
        &input[end..],
    ))
}

/// Reads exactly one value spanning all of `input`.
pub(crate) fn read_single(input: &[u8]) -> Result<Tlv<'_>, FormatError> {
    let (t, rest) = read_tlv(input)?;
    if !rest.is_empty() {
        return Err(ferr(format!(
            "DER: {} bytes of trailing data after the value",
            rest.len()
        )));
    }
    Ok(t)
}

/// Walks every value of `input` without recursion: one value spanning the whole input, every
/// length definite and inside its parent, constructed values nested at most `max_depth` deep
/// (see [`crate::der_limits::check`]).
pub(crate) fn check_der_structure(input: &[u8], max_depth: usize) -> Result<(), FormatError> {
    crate::der_limits::check(input, max_depth).map_err(|e| ferr(e.to_string()))
}

/// Every member named `field` at the top level of `json`, in order (duplicates kept:
/// `serde_json::Value` would keep the last alone): its text when it is a string or a number,
/// else None. Values are skipped, not built, whatever their depth, so that no member goes
/// uncounted. None when `json` is not a JSON object.
pub(super) fn top_level_members(json: &[u8], field: &str) -> Option<Vec<Option<String>>> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct Members<'f>(&'f str);
    impl<'de> Visitor<'de> for Members<'_> {
        type Value = Vec<Option<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = Vec::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == self.0 {
                    found.push(map.next_value::<IdText>()?.0);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let found = de.deserialize_map(Members(field)).ok()?;
    de.end().ok()?;
    Some(found)
}

/// A member's value as an instruction id: the text of a string or a number; anything else is
/// skipped (never built) and gives no id.
struct IdText(Option<String>);

impl<'de> serde::Deserialize<'de> for IdText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<IdText, E> {
                Ok(IdText(Some(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<IdText, E> {
                Ok(IdText(Some(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<IdText, E> {
                Ok(IdText(Some(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<IdText, E> {
                Ok(IdText(
                    serde_json::Number::from_f64(v).map(|n| n.to_string()),
                ))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IdText, E> {
                Ok(IdText(None))
            }
            fn visit_unit<E>(self) -> Result<IdText, E> {
                Ok(IdText(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IdText, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IdText(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdText, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IdText(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
#[path = "formats_tests.rs"]
mod formats_tests;

#[cfg(test)]
mod id_member_tests {
    use super::top_level_members;

    #[test]
    fn every_top_level_member_of_the_name_is_found_in_order_escaped_or_not() {
        let members = |s: &str| top_level_members(s.as_bytes(), "id");
        let ids = |v: &[Option<&str>]| Some(v.iter().map(|i| i.map(String::from)).collect());
        assert_eq!(members(r#"{"id":"A","n":1}"#), ids(&[Some("A")]));
        assert_eq!(
            members(r#"{"id":"A","n":{"id":"nested"},"id":"B"}"#),
            ids(&[Some("A"), Some("B")])
        );
        // The same name escaped is the same member to every JSON parser.
        assert_eq!(
            members(r#"{"id":"A","\u0069d":7}"#),
            ids(&[Some("A"), Some("7")])
        );
        // A member nested deeper than serde_json builds values is counted all the same.
        let deep = format!(
            r#"{{"id":"A","id":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(members(&deep), ids(&[Some("A"), None]));
        assert_eq!(members(r#"{"n":1}"#), Some(vec![]));
        // Not a JSON object (or not JSON at all): no id, as before.
        assert_eq!(members(r#"["id"]"#), None);
        assert_eq!(members("id=A"), None);
        assert_eq!(members(r#"{"id":"A"} trailing"#), None);
    }
}
