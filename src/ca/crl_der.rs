//! Streaming DER for large CRLs: the revokedCertificates entries are written straight into one
//! buffer, each from a store row, without building an x509-cert object per entry. The fixed
//! parts of the TBSCertList (version, algorithm, issuer, times, extensions) still come from
//! x509-cert, so a streamed CRL is byte for byte what `TbsCertList::to_der` would give (the
//! unit tests below compare both).
//!
//! Layout: the buffer starts with a gap big enough for the outer CertificateList header, the
//! TBSCertList header, the fields before revokedCertificates and its SEQUENCE header; entries
//! follow; once their length is known the headers are written right-aligned into the gap, and
//! the signature is appended. The CRL is then the tail of the buffer.

use super::{CaError, Reason};
use crate::store::RevokedEntry;

/// The most bytes a DER header (tag + length up to 2^32) takes.
const MAX_HEADER: usize = 6;

/// DER length octets of `len`.
fn length_octets(len: usize) -> ([u8; 5], usize) {
    let mut out = [0u8; 5];
    if len < 0x80 {
        out[0] = len as u8;
        return (out, 1);
    }
    let bytes = (usize::BITS / 8 - len.leading_zeros() / 8) as usize;
    out[0] = 0x80 | bytes as u8;
    for i in 0..bytes {
        out[1 + i] = (len >> (8 * (bytes - 1 - i))) as u8;
    }
    (out, 1 + bytes)
}

/// Tag + length of a TLV whose value has `len` bytes.
pub(crate) fn header(tag: u8, len: usize) -> Vec<u8> {
    let (l, n) = length_octets(len);
    let mut h = Vec::with_capacity(1 + n);
    h.push(tag);
    h.extend_from_slice(&l[..n]);
    h
}

fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    let (l, n) = length_octets(len);
    out.push(tag);
    out.extend_from_slice(&l[..n]);
}

/// A stored time as calendar fields (before 1970 read as 1970, as before; past 9999 refused,
/// as X.509 cannot encode it).
fn calendar(unix: i64) -> Result<der::DateTime, CaError> {
    let secs = u64::try_from(unix.max(0)).unwrap_or(0);
    der::DateTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map_err(|_| CaError::Encoding(format!("stored time {unix} is past the year 9999")))
}

fn two(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// X.509 Time as `x509::x509_time` encodes it: UTCTime through 2049, GeneralizedTime after.
fn push_time(out: &mut Vec<u8>, t: &der::DateTime, always_generalized: bool) {
    let y = u32::from(t.year());
    if generalized(t, always_generalized) {
        out.extend_from_slice(&[0x18, 15]);
        two(out, y / 100);
    } else {
        out.extend_from_slice(&[0x17, 13]);
    }
    two(out, y % 100);
    two(out, t.month().into());
    two(out, t.day().into());
    two(out, t.hour().into());
    two(out, t.minutes().into());
    two(out, t.seconds().into());
    out.push(b'Z');
}

fn generalized(t: &der::DateTime, always: bool) -> bool {
    always || t.year() > 2049
}

fn time_len(t: &der::DateTime, always_generalized: bool) -> usize {
    if generalized(t, always_generalized) {
        17
    } else {
        15
    }
}

/// The serial's INTEGER content: leading zeros stripped, a 0x00 before a high bit (a positive
/// INTEGER), at most 20 value bytes as x509-cert's `SerialNumber::new` allows.
fn serial_content(hex_serial: &str, buf: &mut [u8; 32]) -> Result<(usize, usize), CaError> {
    let bad = || CaError::Encoding(format!("stored serial {hex_serial:?} is not hex"));
    if !hex_serial.len().is_multiple_of(2) || hex_serial.len() > 60 || hex_serial.is_empty() {
        return Err(bad());
    }
    let n = hex_serial.len() / 2;
    hex::decode_to_slice(hex_serial, &mut buf[1..1 + n]).map_err(|_| bad())?;
    let mut start = 1;
    while start < n && buf[start] == 0 {
        start += 1;
    }
    if buf[start] & 0x80 != 0 {
        start -= 1;
        buf[start] = 0;
    }
    let len = 1 + n - start;
    if len > 20 {
        return Err(CaError::Encoding(format!(
            "stored serial {hex_serial:?} is longer than 20 bytes"
        )));
    }
    Ok((start, len))
}

/// reasonCode extension (2.5.29.21), not critical: OID, OCTET STRING { ENUMERATED }.
const REASON_EXT: [u8; 10] = [0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x15, 0x04, 0x03, 0x0a];
/// invalidityDate extension (2.5.29.24) up to the GeneralizedTime.
const INVALIDITY_EXT: [u8; 9] = [0x30, 0x18, 0x06, 0x03, 0x55, 0x1d, 0x18, 0x04, 0x11];

/// Appends one RevokedCertificate (serial, revocationDate, reasonCode and invalidityDate
/// entry extensions) to `out`; returns the bytes written.
pub(crate) fn write_entry(out: &mut Vec<u8>, e: &RevokedEntry) -> Result<usize, CaError> {
    let mut sbuf = [0u8; 32];
    let (s_start, s_len) = serial_content(&e.serial, &mut sbuf)?;
    let reason = match e.revocation.reason_code {
        Some(code) => {
            Reason::from_code(code).ok_or_else(|| {
                CaError::Encoding(format!("stored reason code {code} is unknown"))
            })?;
            Some(code)
        }
        None => None,
    };
    let revoked_at = calendar(e.revocation.revoked_at)?;
    let invalidity = e.revocation.invalidity_date.map(calendar).transpose()?;
    let ext_len = reason.map_or(0, |_| 12) + invalidity.map_or(0, |_| 26);
    let body = 2 + s_len + time_len(&revoked_at, false) + if ext_len > 0 { 2 + ext_len } else { 0 };
    let before = out.len();
    push_header(out, 0x30, body);
    push_header(out, 0x02, s_len);
    out.extend_from_slice(&sbuf[s_start..s_start + s_len]);
    push_time(out, &revoked_at, false);
    if ext_len > 0 {
        push_header(out, 0x30, ext_len);
        if let Some(code) = reason {
            out.extend_from_slice(&REASON_EXT);
            out.extend_from_slice(&[0x01, code]);
        }
        if let Some(d) = &invalidity {
            out.extend_from_slice(&INVALIDITY_EXT);
            push_time(out, d, true);
        }
    }
    Ok(out.len() - before)
}

/// The TBSCertList split around revokedCertificates: the DER of the fields before it and of
/// those after it (the `[0]` crlExtensions), taken from an x509-cert encoding without entries.
pub(crate) struct TbsFrame {
    pub before: Vec<u8>,
    pub after: Vec<u8>,
}

impl TbsFrame {
    /// Splits the DER of a TBSCertList that has no revokedCertificates.
    pub(crate) fn split(tbs_without_entries: &[u8]) -> Result<Self, CaError> {
        let bad = || CaError::Encoding("unexpected TBSCertList encoding".into());
        let (tag, value) = read_tlv(tbs_without_entries).ok_or_else(bad)?;
        if tag != 0x30 || value.1 != tbs_without_entries.len() {
            return Err(bad());
        }
        let mut pos = value.0;
        let mut before = Vec::new();
        let mut after = Vec::new();
        while pos < tbs_without_entries.len() {
            let (tag, (_, end)) = read_tlv(&tbs_without_entries[pos..]).ok_or_else(bad)?;
            let raw = &tbs_without_entries[pos..pos + end];
            if tag == 0xa0 {
                after.extend_from_slice(raw);
            } else if after.is_empty() {
                before.extend_from_slice(raw);
            } else {
                return Err(bad());
            }
            pos += end;
        }
        Ok(TbsFrame { before, after })
    }

    /// Bytes to reserve in front of the entries.
    pub(crate) fn gap(&self) -> usize {
        3 * MAX_HEADER + self.before.len()
    }
}

/// (tag, (value start, end)) of the TLV at the start of `b` (definite lengths only).
fn read_tlv(b: &[u8]) -> Option<(u8, (usize, usize))> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    (end <= b.len()).then_some((tag, (hdr, end)))
}

/// A CRL being streamed: `buf[..gap]` is reserved, entries follow.
pub(crate) struct CrlBuffer {
    pub buf: Vec<u8>,
    gap: usize,
    /// Where the TBSCertList starts once `finish_tbs` has run.
    tbs_start: usize,
    pub entries: u64,
}

impl CrlBuffer {
    pub(crate) fn new(frame: &TbsFrame) -> Self {
        let gap = frame.gap();
        let mut buf = Vec::with_capacity(gap + 4096);
        buf.resize(gap, 0);
        CrlBuffer {
            buf,
            gap,
            tbs_start: gap,
            entries: 0,
        }
    }

    pub(crate) fn push(&mut self, e: &RevokedEntry) -> Result<(), CaError> {
        write_entry(&mut self.buf, e)?;
        self.entries += 1;
        Ok(())
    }

    /// Writes the headers into the gap and the fields after the entries; returns the
    /// TBSCertList DER (a slice of the buffer).
    pub(crate) fn finish_tbs(&mut self, frame: &TbsFrame) -> &[u8] {
        let entries_len = self.buf.len() - self.gap;
        let mut head = Vec::with_capacity(2 * MAX_HEADER + frame.before.len());
        let revoked_hdr = if self.entries > 0 {
            header(0x30, entries_len)
        } else {
            Vec::new()
        };
        let tbs_len = frame.before.len() + revoked_hdr.len() + entries_len + frame.after.len();
        head.extend_from_slice(&header(0x30, tbs_len));
        head.extend_from_slice(&frame.before);
        head.extend_from_slice(&revoked_hdr);
        self.tbs_start = self.gap - head.len();
        self.buf[self.tbs_start..self.gap].copy_from_slice(&head);
        self.buf.extend_from_slice(&frame.after);
        &self.buf[self.tbs_start..]
    }

    /// The TBSCertList DER, once `finish_tbs` has run.
    pub(crate) fn tbs(&self) -> &[u8] {
        &self.buf[self.tbs_start..]
    }

    /// Appends signatureAlgorithm and the signature BIT STRING, writes the outer header and
    /// returns the CertificateList DER.
    pub(crate) fn finish_crl(mut self, algorithm_der: &[u8], der_sig: &[u8]) -> Vec<u8> {
        let tbs_len = self.buf.len() - self.tbs_start;
        self.buf.extend_from_slice(algorithm_der);
        push_header(&mut self.buf, 0x03, der_sig.len() + 1);
        self.buf.push(0);
        self.buf.extend_from_slice(der_sig);
        debug_assert!(tbs_len > 0);
        let outer = header(0x30, self.buf.len() - self.tbs_start);
        let start = self.tbs_start - outer.len();
        self.buf[start..self.tbs_start].copy_from_slice(&outer);
        self.buf.drain(..start);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RevocationRecord;
    use der::Encode;
    use x509_cert::crl::RevokedCert;
    use x509_cert::serial_number::SerialNumber;

    fn reference(e: &RevokedEntry) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(code) = e.revocation.reason_code {
            exts.push(
                super::super::x509::extension(&super::super::crl_reason(code).unwrap(), false)
                    .unwrap(),
            );
        }
        if let Some(d) = e.revocation.invalidity_date {
            exts.push(
                super::super::x509::raw_extension(
                    super::super::x509::ID_CE_INVALIDITY_DATE,
                    false,
                    super::super::x509::generalized_time(d)
                        .unwrap()
                        .to_der()
                        .unwrap(),
                )
                .unwrap(),
            );
        }
        RevokedCert::<x509_cert::certificate::Rfc5280> {
            serial_number: SerialNumber::new(&hex::decode(&e.serial).unwrap()).unwrap(),
            revocation_date: super::super::x509::x509_time(e.revocation.revoked_at).unwrap(),
            crl_entry_extensions: (!exts.is_empty()).then_some(exts),
        }
        .to_der()
        .unwrap()
    }

    fn entry(serial: &str, at: i64, reason: Option<u8>, inv: Option<i64>) -> RevokedEntry {
        RevokedEntry {
            serial: serial.into(),
            revocation: RevocationRecord {
                revoked_at: at,
                reason_code: reason,
                invalidity_date: inv,
            },
        }
    }

    #[test]
    fn streamed_entries_are_byte_identical_to_x509_cert() {
        let cases = [
            entry(
                "7f3a9c0011223344556677889900aabb",
                1_790_000_000,
                None,
                None,
            ),
            entry(
                "ff3a9c0011223344556677889900aabb",
                1_790_000_001,
                Some(1),
                None,
            ),
            entry(
                "003a9c0011223344556677889900aabb",
                0,
                Some(6),
                Some(1_789_999_000),
            ),
            entry("01", 951_782_400, Some(0), Some(951_782_399)), // 2000-02-29
            entry("80", 2_524_608_000, Some(10), Some(4_102_444_800)), // 2050, 2100
            entry(
                "0000000000000000000000000000000000000001",
                2_524_607_999,
                Some(9),
                None,
            ),
            entry(
                "ffffffffffffffffffffffffffffffffffffff",
                1_700_000_000,
                Some(5),
                Some(1),
            ),
        ];
        for e in &cases {
            let mut out = Vec::new();
            let n = write_entry(&mut out, e).unwrap();
            assert_eq!(out, reference(e), "{e:?}");
            assert_eq!(n, out.len());
        }
    }

    #[test]
    fn a_serial_that_is_not_hex_or_too_long_is_refused() {
        let mut out = Vec::new();
        assert!(write_entry(&mut out, &entry("zz", 1, None, None)).is_err());
        assert!(write_entry(&mut out, &entry(&"7f".repeat(21), 1, None, None)).is_err());
        assert!(write_entry(&mut out, &entry(&"ff".repeat(20), 1, None, None)).is_err());
        assert!(write_entry(&mut out, &entry("01", 1, Some(7), None)).is_err());
    }

    #[test]
    fn a_time_past_the_year_9999_is_refused() {
        let mut out = Vec::new();
        let last_second = 253_402_300_799;
        assert!(write_entry(&mut out, &entry("01", last_second, None, None)).is_ok());
        assert!(write_entry(&mut out, &entry("01", last_second + 1, None, None)).is_err());
        let late_invalidity = entry("01", 1, None, Some(last_second + 1));
        assert!(write_entry(&mut out, &late_invalidity).is_err());
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        assert_eq!(header(0x30, 0x7f), vec![0x30, 0x7f]);
        assert_eq!(header(0x30, 0x80), vec![0x30, 0x81, 0x80]);
        assert_eq!(header(0x30, 0x1_0000), vec![0x30, 0x83, 0x01, 0x00, 0x00]);
        assert_eq!(
            header(0x30, 50_000_000),
            vec![0x30, 0x84, 0x02, 0xfa, 0xf0, 0x80]
        );
    }
}
