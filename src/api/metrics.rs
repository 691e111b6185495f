//! Prometheus text metrics: requests and latencies per route, issuances, HSM signing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::hsm::HsmStats;

#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    seconds_sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, RouteStats>>,
    issuances: AtomicU64,
}

impl Metrics {
    pub fn observe_request(&self, route: &str, status: u16, took: Duration) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let r = routes.entry(route.to_string()).or_default();
        *r.by_status.entry(status).or_default() += 1;
        r.seconds_sum += took.as_secs_f64();
        r.count += 1;
    }

    pub fn issued(&self) {
        self.issuances.fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics, with the HSM's statistics and the count of certificates given it to sign.
    pub fn render(&self, hsm: &HsmStats, certificates_to_sign: u64, audit_altered: bool) -> String {
        let mut out = String::new();
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP signet_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE signet_http_requests_total counter\n");
        for (route, r) in routes.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(
                    out,
                    "signet_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP signet_http_request_duration_seconds Time to answer, by route.\n");
        out.push_str("# TYPE signet_http_request_duration_seconds summary\n");
        for (route, r) in routes.iter() {
            let _ = writeln!(
                out,
                "signet_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                r.seconds_sum
            );
            let _ = writeln!(
                out,
                "signet_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                r.count
            );
        }
        out.push_str("# HELP signet_issuances_total Certificates issued through the API.\n");
        out.push_str("# TYPE signet_issuances_total counter\n");
        let _ = writeln!(
            out,
            "signet_issuances_total {}",
            self.issuances.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP signet_certificate_signs_total Certificates this process gave the HSM to sign (end-entity, CA, service), whether or not it signed them.\n",
        );
        out.push_str("# TYPE signet_certificate_signs_total counter\n");
        let _ = writeln!(out, "signet_certificate_signs_total {certificates_to_sign}");
        out.push_str("# HELP signet_audit_chain_altered 1 once this process found the audit chain no longer holding what it appended or checkpointed (it then issues and signs nothing).\n");
        out.push_str("# TYPE signet_audit_chain_altered gauge\n");
        let _ = writeln!(
            out,
            "signet_audit_chain_altered {}",
            u8::from(audit_altered)
        );
        out.push_str("# HELP signet_hsm_sign_seconds Time spent in HSM signing.\n");
        out.push_str("# TYPE signet_hsm_sign_seconds summary\n");
        let _ = writeln!(out, "signet_hsm_sign_seconds_sum {}", hsm.sign_seconds);
        let _ = writeln!(out, "signet_hsm_sign_seconds_count {}", hsm.signs);
        out.push_str("# HELP signet_hsm_errors_total Failed HSM operations.\n");
        out.push_str("# TYPE signet_hsm_errors_total counter\n");
        let _ = writeln!(out, "signet_hsm_errors_total {}", hsm.errors);
        out.push_str(
            "# HELP signet_hsm_recoveries_total PKCS#11 contexts rebuilt after a module failure.\n",
        );
        out.push_str("# TYPE signet_hsm_recoveries_total counter\n");
        let _ = writeln!(out, "signet_hsm_recoveries_total {}", hsm.recoveries);
        out.push_str(
            "# HELP signet_hsm_timeouts_total HSM operations abandoned at [hsm].call_timeout_ms.\n",
        );
        out.push_str("# TYPE signet_hsm_timeouts_total counter\n");
        let _ = writeln!(out, "signet_hsm_timeouts_total {}", hsm.timeouts);
        out
    }
}
