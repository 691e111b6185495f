//! Counting failed authentications per key (a client address, a credential named by a token)
//! and locking a key out for a while once it fails too often. Pure logic over the caller's
//! clock; memory is bounded.
//!
//! The counts live in the process: several `signet serve` processes behind a load balancer
//! each enforce the limit on what they see (so a client gets at most `processes x limit`
//! guesses per window), which is what the limit is for: making guessing slow, not exact.

use std::collections::HashMap;
use std::sync::Mutex;

/// How many failures a key may have in a window before it is locked out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_failures: u32,
    pub window_secs: i64,
    pub lockout_secs: i64,
}

/// Most keys tracked at once. Beyond that, keys that are not locked out are forgotten first
/// (an anonymous flood from many addresses cannot exhaust memory).
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: i64,
    locked_until: i64,
}

/// Failure counts of many keys.
#[derive(Debug)]
pub struct FailureLimiter {
    limits: Limits,
    entries: Mutex<HashMap<String, Entry>>,
}

impl FailureLimiter {
    pub fn new(limits: Limits) -> Self {
        FailureLimiter {
            limits,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// `Err(seconds)` while `key` is locked out: how long until it may try again (at least 1).
    pub fn check(&self, key: &str, now: i64) -> Result<(), i64> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some(e) if e.locked_until > now => Err((e.locked_until - now).max(1)),
            _ => Ok(()),
        }
    }

    /// Counts a failure of `key`. Returns `Some(seconds locked)` when this very failure locks
    /// the key out (once per lockout, so that the caller can audit the trip once).
    pub fn record_failure(&self, key: &str, now: i64) -> Option<i64> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_KEYS && !entries.contains_key(key) {
            let l = self.limits;
            entries.retain(|_, e| e.locked_until > now || now - e.window_start < l.window_secs);
            if entries.len() >= MAX_KEYS {
                entries.retain(|_, e| e.locked_until > now);
            }
            if entries.len() >= MAX_KEYS {
                // Every tracked key is locked out: this one is not tracked (but the others
                // stay refused until their lockout ends).
                return None;
            }
        }
        let e = entries.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: 0,
        });
        if e.locked_until > now {
            return None;
        }
        if now - e.window_start >= self.limits.window_secs {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += 1;
        if e.failures >= self.limits.max_failures {
            e.locked_until = now + self.limits.lockout_secs;
            e.failures = 0;
            e.window_start = e.locked_until;
            return Some(self.limits.lockout_secs);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> FailureLimiter {
        FailureLimiter::new(Limits {
            max_failures: 3,
            window_secs: 60,
            lockout_secs: 120,
        })
    }

    #[test]
    fn the_failure_that_reaches_the_limit_trips_once_and_locks_for_the_lockout() {
        let l = limiter();
        assert_eq!(l.record_failure("a", 1000), None);
        assert_eq!(l.record_failure("a", 1001), None);
        assert_eq!(l.check("a", 1001), Ok(()));
        assert_eq!(l.record_failure("a", 1002), Some(120));
        assert_eq!(l.check("a", 1002), Err(120));
        assert_eq!(l.check("a", 1100), Err(22));
        // Failures while locked do not trip again.
        assert_eq!(l.record_failure("a", 1100), None);
        assert_eq!(l.check("a", 1122), Ok(()));
        assert_eq!(l.check("b", 1002), Ok(()), "other keys are not affected");
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let l = limiter();
        l.record_failure("a", 0);
        l.record_failure("a", 1);
        assert_eq!(l.record_failure("a", 61), None);
        assert_eq!(l.record_failure("a", 62), None);
        assert_eq!(l.record_failure("a", 63), Some(120));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_new_keys() {
        let l = FailureLimiter::new(Limits {
            max_failures: 2,
            window_secs: 60,
            lockout_secs: 60,
        });
        for i in 0..(MAX_KEYS + 10) {
            l.record_failure(&format!("k{i}"), 0);
        }
        assert!(l.entries.lock().unwrap().len() <= MAX_KEYS);
    }
}
