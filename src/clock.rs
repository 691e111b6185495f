//! The one clock (design invariant 7): nothing else reads the system time.
//!
//! Tests set it through `Clock::fixed`, or for the CLI through `SIGNET_FAKE_NOW` (Unix seconds).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Environment variable that fixes the clock of a `signet` process (tests and drills only).
pub const FAKE_NOW_ENV: &str = "SIGNET_FAKE_NOW";

/// A shareable clock: the system clock, or a settable one.
#[derive(Clone, Debug)]
pub struct Clock {
    fixed: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Self {
        Clock { fixed: None }
    }

    /// A clock that says `unix_secs` until it is set again.
    pub fn fixed(unix_secs: i64) -> Self {
        Clock {
            fixed: Some(Arc::new(AtomicI64::new(unix_secs))),
        }
    }

    /// The system clock unless `SIGNET_FAKE_NOW` holds a Unix time.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(FAKE_NOW_ENV) {
            Ok(v) => v
                .trim()
                .parse::<i64>()
                .map(Clock::fixed)
                .map_err(|_| format!("{FAKE_NOW_ENV}={v:?} is not a Unix time in seconds")),
            Err(_) => Ok(Clock::system()),
        }
    }

    /// Sets a fixed clock (no effect on the system clock).
    pub fn set(&self, unix_secs: i64) {
        if let Some(f) = &self.fixed {
            f.store(unix_secs, Ordering::SeqCst);
        }
    }

    /// Now, in whole seconds since the Unix epoch (certificates carry no finer time).
    pub fn now(&self) -> i64 {
        match &self.fixed {
            Some(f) => f.load(Ordering::SeqCst),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs() as i64,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` to Unix seconds.
pub fn parse_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u16>().ok();
    let dt = der::DateTime::new(
        n(0..4)?,
        n(5..7)? as u8,
        n(8..10)? as u8,
        n(11..13)? as u8,
        n(14..16)? as u8,
        n(17..19)? as u8,
    )
    .ok()?;
    Some(dt.unix_duration().as_secs() as i64)
}

/// Unix seconds to `YYYY-MM-DDTHH:MM:SSZ`; `None` before 1970 or past 9999.
pub fn format_utc(unix: i64) -> Option<String> {
    let secs = u64::try_from(unix).ok()?;
    let d = der::DateTime::from_unix_duration(Duration::from_secs(secs)).ok()?;
    // Written digit by digit: every verification report formats a few of these, and
    // `format!` with padding cost more than the calendar arithmetic.
    let mut out = String::with_capacity(20);
    let mut digits = |n: u16, width: u32, then: char| {
        for place in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10u16.pow(place) % 10) as u8));
        }
        out.push(then);
    };
    digits(d.year(), 4, '-');
    digits(d.month().into(), 2, '-');
    digits(d.day().into(), 2, 'T');
    digits(d.hour().into(), 2, ':');
    digits(d.minutes().into(), 2, ':');
    digits(d.seconds().into(), 2, 'Z');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_times() {
        assert_eq!(parse_utc("1970-01-02T00:00:00Z"), Some(86_400));
        assert_eq!(parse_utc("2026-11-01T00:00:00Z"), Some(1_793_491_200));
    }

    #[test]
    fn formats_what_it_parses() {
        assert_eq!(
            format_utc(1_793_491_200).as_deref(),
            Some("2026-11-01T00:00:00Z")
        );
        assert_eq!(format_utc(-1), None);
    }

    #[test]
    fn formats_every_field_with_its_padding() {
        assert_eq!(format_utc(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            format_utc(1_793_534_465).as_deref(),
            Some("2026-11-01T12:01:05Z")
        );
        assert_eq!(
            format_utc(253_402_300_799).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(format_utc(253_402_300_800), None);
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "2026-11-01",
            "2026-11-01T00:00:00+08:00",
            "2026-13-01T00:00:00Z",
            "x",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
