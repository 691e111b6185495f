//! A cheap, iterative look at the shape of untrusted DER before any recursive decoder (the
//! `der`, `x509-cert` and `cms` crates) sees it: one value spanning the input, every length
//! definite and inside its parent, constructed values nested at most so deep. Pure, no
//! allocation beyond one stack of offsets bounded by the depth limit; used by the CSR reader
//! (`ra::csr`), the OCSP request reader (`ca::ocsp`) and the signature reader (`verify`).

/// Why a DER input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DerShapeError {
    #[error("DER: empty input")]
    Empty,
    #[error("DER: truncated at offset {0}")]
    Truncated(usize),
    #[error("DER: tag number too long at offset {0}")]
    TagTooLong(usize),
    #[error("DER: length field longer than 4 bytes at offset {0}")]
    LengthTooLong(usize),
    #[error("DER: indefinite length (BER) where DER is required")]
    IndefiniteLength,
    #[error("DER: value of {len} bytes at offset {at} runs past its container")]
    PastEnd { at: usize, len: usize },
    #[error("DER: {0} bytes of trailing data after the value")]
    TrailingData(usize),
    #[error("DER: nested more than {0} levels deep")]
    TooDeep(usize),
}

/// Reads the header at `input[at..end]`: (header length, first identifier octet, value length).
fn header(input: &[u8], at: usize, end: usize) -> Result<(usize, u8, usize), DerShapeError> {
    let b = &input[at..end];
    let first = *b.first().ok_or(DerShapeError::Truncated(at))?;
    let mut pos = 1;
    if first & 0x1f == 0x1f {
        // High tag number form: base-128 digits, at most 4 of them.
        loop {
            let d = *b.get(pos).ok_or(DerShapeError::Truncated(at))?;
            pos += 1;
            if d & 0x80 == 0 {
                break;
            }
            if pos > 5 {
                return Err(DerShapeError::TagTooLong(at));
            }
        }
    }
    let l0 = *b.get(pos).ok_or(DerShapeError::Truncated(at))?;
    pos += 1;
    let len = match l0 {
        0..=0x7f => l0 as usize,
        0x80 => return Err(DerShapeError::IndefiniteLength),
        _ => {
            let n = (l0 & 0x7f) as usize;
            if n > 4 {
                return Err(DerShapeError::LengthTooLong(at));
            }
            let bytes = b.get(pos..pos + n).ok_or(DerShapeError::Truncated(at))?;
            pos += n;
            bytes.iter().fold(0usize, |acc, x| (acc << 8) | *x as usize)
        }
    };
    Ok((pos, first, len))
}

/// Walks every value of `input` without recursion. Primitive values (OCTET STRING, BIT
/// STRING) are not looked into.
pub fn check(input: &[u8], max_depth: usize) -> Result<(), DerShapeError> {
    check_shape(input, max_depth).map(|_| ())
}

/// What [`check_shape`] saw beyond the limits it enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Every length is in its shortest form and no OCTET STRING is constructed: the input is
    /// already what a BER-to-DER rewrite of lengths would produce (`verify::input` skips it).
    pub minimal_lengths: bool,
}

/// [`check`], also telling whether every length is minimal.
pub fn check_shape(input: &[u8], max_depth: usize) -> Result<Shape, DerShapeError> {
    let mut minimal_lengths = true;
    if input.is_empty() {
        return Err(DerShapeError::Empty);
    }
    // End offsets of the open constructed values; the outermost is the whole input.
    let mut ends: Vec<usize> = vec![input.len()];
    let mut pos = 0usize;
    let mut seen_top = false;
    while let Some(&end) = ends.last() {
        if pos == end {
            ends.pop();
            continue;
        }
        if ends.len() == 1 {
            if seen_top {
                return Err(DerShapeError::TrailingData(input.len() - pos));
            }
            seen_top = true;
        }
        let (hlen, tag, len) = header(input, pos, end)?;
        // A high tag number, a constructed OCTET STRING or a padded length: not canonical.
        if minimal_lengths && (tag & 0x1f == 0x1f || tag == 0x24 || hlen != 1 + length_octets(len))
        {
            minimal_lengths = false;
        }
        let vstart = pos + hlen;
        let vend = vstart
            .checked_add(len)
            .filter(|e| *e <= end)
            .ok_or(DerShapeError::PastEnd { at: pos, len })?;
        if tag & 0x20 != 0 {
            if ends.len() > max_depth {
                return Err(DerShapeError::TooDeep(max_depth));
            }
            ends.push(vend);
            pos = vstart;
        } else {
            pos = vend;
        }
    }
    Ok(Shape { minimal_lengths })
}

/// Octets of the shortest length field for `len`.
fn length_octets(len: usize) -> usize {
    match len {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xff_ffff => 4,
        _ => 5,
    }
}

/// `levels` SEQUENCEs, each holding the next, around an empty one (for tests).
#[cfg(test)]
pub(crate) fn nested_sequences(levels: usize) -> Vec<u8> {
    fn length_octets(len: usize) -> Vec<u8> {
        if len < 0x80 {
            return vec![len as u8];
        }
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let mut v = vec![0x80 | (4 - skip) as u8];
        v.extend_from_slice(&bytes[skip..]);
        v
    }
    // Lengths from the inside out, then headers from the outside in.
    let mut lens = vec![2usize];
    for _ in 0..levels {
        let inner = *lens.last().expect("not empty");
        lens.push(1 + length_octets(inner).len() + inner);
    }
    let mut out = Vec::with_capacity(*lens.last().expect("not empty"));
    for inner in lens[..levels].iter().rev() {
        out.push(0x30);
        out.extend_from_slice(&length_octets(*inner));
    }
    out.extend_from_slice(&[0x30, 0x00]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        assert_eq!(check(&nested_sequences(9), 10), Ok(()));
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        assert_eq!(
            check(&nested_sequences(10), 10),
            Err(DerShapeError::TooDeep(10))
        );
    }

    #[test]
    fn a_hundred_thousand_levels_are_refused_without_recursion() {
        let mut v = Vec::new();
        for _ in 0..100_000 {
            v.extend_from_slice(&[0x30, 0x80]);
        }
        assert_eq!(check(&v, 32), Err(DerShapeError::IndefiniteLength));
        assert_eq!(
            check(&nested_sequences(100_000), 32),
            Err(DerShapeError::TooDeep(32))
        );
    }

    #[test]
    fn a_length_past_the_end_is_refused() {
        assert_eq!(
            check(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0x00], 8),
            Err(DerShapeError::PastEnd {
                at: 0,
                len: 0xffff_ffff
            })
        );
    }

    #[test]
    fn the_shape_tells_whether_every_length_is_minimal() {
        let minimal = |b: &[u8]| check_shape(b, 8).unwrap().minimal_lengths;
        assert!(minimal(&[0x30, 0x03, 0x04, 0x01, 0x00]));
        assert!(minimal(&nested_sequences(3)));
        // A one-byte length written in long form.
        assert!(!minimal(&[0x30, 0x81, 0x02, 0x05, 0x00]));
        // A constructed OCTET STRING.
        assert!(!minimal(&[0x24, 0x03, 0x04, 0x01, 0x00]));
        // A 200-byte value needs the two-octet form, and has it.
        let mut long = vec![0x04, 0x81, 200];
        long.extend([0u8; 200]);
        assert!(minimal(&long));
    }

    #[test]
    fn trailing_data_is_refused() {
        assert_eq!(
            check(&[0x30, 0x00, 0x00], 8),
            Err(DerShapeError::TrailingData(1))
        );
    }

    #[test]
    fn truncated_headers_are_refused() {
        assert_eq!(check(&[0x30], 8), Err(DerShapeError::Truncated(0)));
        assert_eq!(
            check(&[0x30, 0x82, 0x01], 8),
            Err(DerShapeError::Truncated(0))
        );
        assert_eq!(check(&[0x1f, 0x81], 8), Err(DerShapeError::Truncated(0)));
    }
}
