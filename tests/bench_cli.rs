//! `signet bench` (the load generator) against a real `signet serve`: a short run with two
//! clients (the full run is `scripts/perf.sh`).

mod common;

use common::http::Server;
use common::{fixture, Fixture};

fn cli_ok(f: &Fixture, args: &[&str]) -> String {
    let out = f.signet(args);
    out.assert_ok();
    out.stdout.trim().to_string()
}

/// A token file (mode 0600) holding a fresh credential of `role` at "Bench Bank".
fn token_file(f: &Fixture, role: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let token = cli_ok(
        f,
        &[
            "credential",
            "add",
            "--tenant",
            "Bench Bank",
            "--role",
            role,
        ],
    );
    let path = f.path(&format!("bench-{role}.token"));
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// The figure on a report line: `label  req/s  p50  p99  max  errors ...`.
fn figures(report: &str, label: &str) -> Vec<f64> {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in the report:\n{report}"));
    line[label.len()..]
        .split_whitespace()
        .take(5)
        .map(|w| {
            w.parse()
                .unwrap_or_else(|_| panic!("not a figure {w:?} in {line:?}"))
        })
        .collect()
}

#[test]
fn bench_drives_issuance_verification_and_ocsp_one_by_one_and_in_batches_and_reports_rates_latency_and_memory(
) {
    let f = fixture();
    cli_ok(f, &["tenant", "add", "Bench Bank"]);
    let officer = token_file(f, "ra-officer");
    let gateway = token_file(f, "gateway");
    let server = Server::start(f);

    let out = f.signet(&[
        "bench",
        "--server",
        &server.base,
        "--token-file",
        officer.to_str().unwrap(),
        "--gateway-token-file",
        gateway.to_str().unwrap(),
        "--scenario",
        "issuance,issuance-batch,verification,verification-batch,ocsp,mixed",
        "--batch",
        "4",
        "--clients",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ]);
    out.assert_ok();
    let report = out.stdout.clone();
    for label in [
        "signet issuance ",
        "signet issuance-batch",
        "signet verification ",
        "signet verification-batch",
        "signet ocsp",
        "signet mixed",
    ] {
        let v = figures(&report, label);
        let (rate, p50, p99, max, errors) = (v[0], v[1], v[2], v[3], v[4]);
        assert!(rate > 0.0, "{label}: no request served\n{report}");
        assert!(
            p50 <= p99 && p99 <= max,
            "{label}: percentiles out of order\n{report}"
        );
        assert_eq!(errors, 0.0, "{label}: errors\n{report}");
    }
    assert!(
        report.contains("batch rows: items per second, 4 per request"),
        "{report}"
    );
    // The server was found by its port, and its memory sampled idle and under load.
    assert!(
        report.contains("server RSS (pid") && report.contains("idle ") && report.contains(" MiB"),
        "{report}"
    );
    server.stop();
    // The grouped writes kept the audit chain whole.
    cli_ok(f, &["audit", "verify"]);
}

#[test]
fn bench_without_a_readable_token_file_is_a_usage_error_that_names_the_file() {
    let f = fixture();
    let out = f.signet(&[
        "bench",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        "/nonexistent/bench.token",
        "--duration",
        "1",
    ]);
    out.assert_refused();
    out.assert_stderr_mentions("/nonexistent/bench.token");
    assert_eq!(out.status.code(), Some(64), "{}", out.describe());
}

#[test]
fn bench_refuses_an_unknown_scenario() {
    let f = fixture();
    let out = f.signet(&[
        "bench",
        "--token-file",
        "/dev/null",
        "--scenario",
        "issuance,teleport",
    ]);
    out.assert_refused();
    out.assert_stderr_mentions("teleport");
}

#[test]
fn bench_refuses_a_batch_size_the_api_would_refuse() {
    let f = fixture();
    for size in ["0", "65"] {
        let out = f.signet(&[
            "bench",
            "--token-file",
            "/dev/null",
            "--scenario",
            "verification-batch",
            "--batch",
            size,
        ]);
        out.assert_refused();
        out.assert_stderr_mentions("--batch must be between 1 and 64");
        assert_eq!(out.status.code(), Some(64), "{}", out.describe());
    }
}
