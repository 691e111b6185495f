//! Profile and CRL options beyond the defaults: CRL shards with issuingDistributionPoint, and
//! ID numbers carried as a keyed hash. Each runs on a copy of the fixture's config.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{fixture, openssl, pkilint, set_toml_key, toml_str, Fixture, KeyKind};

fn config_with(f: &Fixture, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = fs::read_to_string(&f.config).unwrap();
    let path = f.path(name);
    fs::write(&path, edit(text)).unwrap();
    path
}

/// A copy of the fixture's store configured with two CRL shards, as a CA set up that way from
/// the start: the copy's CRLs of the issuing CAs (whole-issuer ones, made under the fixture's
/// single shard) are dropped, since Signet refuses a shard count its CRLs were not made with.
fn sharded_copy(f: &Fixture, name: &str) -> PathBuf {
    let copy = f.store_copy(name, &[("ca", "crl_shards", "2".into())]);
    common::open_db(&copy.db)
        .execute("DELETE FROM crls WHERE issuer != 'root'", [])
        .unwrap();
    copy.config
}

fn issue_with(
    f: &Fixture,
    config: &std::path::Path,
    profile: &str,
    subject: &str,
) -> (String, PathBuf) {
    let issued = f.issue_with(config, profile, &f.csr(KeyKind::P256), subject, &[]);
    (issued.serial, issued.leaf)
}

fn cert_text(leaf: &std::path::Path) -> String {
    let out = openssl(&args![
        "x509", "-in", leaf, "-noout", "-text", "-nameopt", "utf8"
    ]);
    out.assert_ok();
    out.stdout
}

#[test]
fn sharded_crl_names_its_shard_and_lists_the_certificates_of_that_shard() {
    let f = fixture();
    let config = sharded_copy(f, "sharded");
    let (serial, leaf) = issue_with(f, &config, "customer", "CN=分片,serialNumber=S1");
    let text = cert_text(&leaf);
    let url = text
        .lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix("URI:")
                .filter(|u| u.contains("/crl/customer-"))
        })
        .unwrap_or_else(|| panic!("no shard CRL distribution point:\n{text}"))
        .to_string();
    let shard = url
        .rsplit_once('-')
        .and_then(|(_, s)| s.strip_suffix(".crl"))
        .expect("shard number in the URL")
        .to_string();
    common::assert_lint_clean(&pkilint(
        "lint_pkix_cert",
        &args!["lint", "-s", "ERROR", &leaf],
    ));

    f.signet_with(
        &config,
        &[],
        &args!["revoke", "--serial", &serial, "--reason", "keyCompromise"],
    )
    .assert_ok();
    let crl = f.path("shard.crl");
    f.signet_with(
        &config,
        &[],
        &args!["crl", "--issuer", "customer", "--shard", &shard, "--out", &crl],
    )
    .assert_ok();
    let parsed = f.crl_text(&crl, &f.bundle("customer-ca.pem"));
    assert!(
        parsed.entry(&serial).is_some(),
        "revoked serial on its shard's CRL"
    );
    assert!(
        parsed.text.contains("Issuing Distribution Point"),
        "{}",
        parsed.text
    );
    assert!(
        parsed.text.contains(&url),
        "the IDP names the shard URL {url}:\n{}",
        parsed.text
    );
    common::assert_lint_clean(&pkilint(
        "lint_crl",
        &args!["lint", "-t", "CRL", "-p", "PKIX", "-s", "ERROR", &crl],
    ));

    let other = if shard == "0" { "1" } else { "0" };
    let crl2 = f.path("other-shard.crl");
    f.signet_with(
        &config,
        &[],
        &args!["crl", "--issuer", "customer", "--shard", other, "--out", &crl2],
    )
    .assert_ok();
    let parsed2 = f.crl_text(&crl2, &f.bundle("customer-ca.pem"));
    assert!(
        parsed2.entry(&serial).is_none(),
        "not on the other shard's CRL"
    );
}

#[test]
fn sharded_crl_needs_a_valid_shard_number() {
    let f = fixture();
    let config = sharded_copy(f, "sharded2");
    let crl = f.path("noshard.crl");
    f.signet_with(
        &config,
        &[],
        &args!["crl", "--issuer", "customer", "--out", &crl],
    )
    .assert_refused()
    .assert_stderr_mentions("--shard");
    f.signet_with(
        &config,
        &[],
        &args!["crl", "--issuer", "customer", "--shard", "7", "--out", &crl],
    )
    .assert_refused()
    .assert_stderr_mentions("shard 7");
}

#[test]
fn a_shard_count_other_than_the_one_the_crls_were_made_with_is_warned_of_at_every_start() {
    let f = fixture();
    let crl = f.path("warned-shard.crl");
    let with_shards = |base: &std::path::Path, name: &str, n: &str| {
        config_with(f, name, |_| {
            set_toml_key(&fs::read_to_string(base).unwrap(), "ca", "crl_shards", n)
        })
    };
    // One CRL of the whole customer CA, then two shards: that CRL's certificates lose it.
    let single = f.store_copy("one-shard", &[]);
    f.crl_with(&single.config, &[], "customer");
    let two = with_shards(&single.config, "one-shard-now-two.toml", "2");
    let crl_args =
        |shard: &str| args!["crl", "--issuer", "customer", "--shard", shard, "--out", &crl];
    f.signet_with(&two, &[], &crl_args("0"))
        .assert_ok()
        .assert_stderr_mentions("set crl_shards back to 1");
    // The store now holds both kinds; either count still opens it (and warns).
    f.signet_with(
        &single.config,
        &[],
        &args!["crl", "--issuer", "customer", "--out", &crl],
    )
    .assert_ok()
    .assert_stderr_mentions("crl_shards is 1");
    // Two shards, then one: shard 1's certificates are on no CRL.
    let sharded = sharded_copy(f, "two-shards");
    for shard in ["0", "1"] {
        let out = f.signet_with(&sharded, &[], &crl_args(shard));
        out.assert_ok();
        assert!(!out.stderr.contains("crl_shards"), "{}", out.describe());
    }
    let one = with_shards(&sharded, "two-shards-now-one.toml", "1");
    f.signet_with(
        &one,
        &[],
        &args!["crl", "--issuer", "customer", "--out", &crl],
    )
    .assert_ok()
    .assert_stderr_mentions("set crl_shards back to 2");
}

/// A config whose policies are a copy of the shipped customer and teller profiles and a
/// profile `name` made from the customer profile by `edit`; `more` appends to the config's
/// last section ([issuance]).
fn config_with_profile(
    f: &Fixture,
    name: &str,
    edit: impl Fn(String) -> String,
    more: &str,
) -> PathBuf {
    let policies = f.path("policies");
    fs::create_dir_all(&policies).unwrap();
    for p in ["customer.toml", "teller.toml"] {
        fs::copy(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .join(p),
            policies.join(p),
        )
        .unwrap();
    }
    let profile = edit(fs::read_to_string(policies.join("customer.toml")).unwrap());
    fs::write(policies.join(format!("{name}.toml")), profile).unwrap();
    config_with(f, &format!("{name}-config.toml"), |t| {
        let t = set_toml_key(
            &t,
            "issuance",
            "policies",
            &toml_str(&policies.to_string_lossy()),
        );
        format!("{t}{more}")
    })
}

#[test]
fn a_time_stamping_profile_writes_its_purpose_alone_and_critical() {
    // RFC 3161 section 2.3.
    let f = fixture();
    let config = config_with_profile(
        f,
        "tsa",
        |p| {
            p.replace(
                "extended_key_usage = []",
                "extended_key_usage = [\"timeStamping\"]",
            )
        },
        "",
    );
    let (_, leaf) = issue_with(f, &config, "tsa", "CN=Bank TSA 1,serialNumber=TSA-1");
    let text = cert_text(&leaf);
    assert!(
        text.contains("X509v3 Extended Key Usage: critical\n                Time Stamping\n"),
        "{text}"
    );
    openssl(&args![
        "verify",
        "-purpose",
        "timestampsign",
        "-partial_chain",
        "-CAfile",
        f.ca("customer-ca.pem"),
        &leaf
    ])
    .assert_ok();
}

#[test]
fn keyed_hash_profile_writes_the_hmac_of_the_id_number_never_the_number() {
    let f = fixture();
    let id = "110101199001011237";
    // A privacy-minded profile.
    let key_hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let key_file = f.path("id-hash.key");
    fs::write(&key_file, hex_decode(key_hex)).unwrap();
    let config = config_with_profile(
        f,
        "customer-private",
        |p| p.replace("id_number = \"clear\"", "id_number = \"keyed-hash\""),
        &format!(
            "id_hash_key_file = {}\n",
            toml_str(&key_file.to_string_lossy())
        ),
    );
    let (serial, leaf) = issue_with(
        f,
        &config,
        "customer-private",
        &format!("CN=隐私,serialNumber={id}"),
    );
    let text = cert_text(&leaf);
    assert!(
        !text.contains(id),
        "the certificate must not carry the ID number:\n{text}"
    );

    let mac_out = openssl(&args![
        "dgst",
        "-sha256",
        "-mac",
        "HMAC",
        "-macopt",
        format!("hexkey:{key_hex}"),
        &write_tmp(f, id)
    ]);
    mac_out.assert_ok();
    let mac = mac_out
        .stdout
        .rsplit(' ')
        .next()
        .unwrap()
        .trim()
        .to_uppercase();
    assert!(
        text.contains(&format!("serialNumber={mac}")),
        "serialNumber is HMAC-SHA256 of the ID:\n{text}"
    );
    common::assert_lint_clean(&pkilint(
        "lint_pkix_cert",
        &args!["lint", "-s", "ERROR", &leaf],
    ));

    // Nothing in the store's text columns holds the ID number in clear.
    let db = common::open_db(&f.db);
    let hits: i64 = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM certificates WHERE subject LIKE ?1)
                  + (SELECT COUNT(*) FROM audit_events WHERE details LIKE ?1 OR object LIKE ?1)",
            [format!("%{id}%")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hits, 0, "ID number found in the store (serial {serial})");
}

#[test]
fn audit_log_never_holds_a_clear_id_number() {
    let f = fixture();
    let id = "31010119800101001X";
    f.issue(
        common::Profile::Customer,
        &format!("CN=审计,serialNumber={id}"),
    );
    let db = common::open_db(&f.db);
    let hits: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit_events WHERE details LIKE ?1 OR object LIKE ?1 OR actor LIKE ?1",
            [format!("%{id}%")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hits, 0);
}

fn write_tmp(f: &Fixture, content: &str) -> PathBuf {
    let p = f.path("data.txt");
    fs::write(&p, content).unwrap();
    p
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn signet_hsm_module_in_the_environment_overrides_the_configured_module() {
    let f = fixture();
    let crl = f.path("x.crl");
    f.signet_with(
        &f.config,
        &[("SIGNET_HSM_MODULE", "/nonexistent/libnothing.so".into())],
        &args!["crl", "--issuer", "root", "--out", &crl],
    )
    .assert_refused()
    .assert_stderr_mentions("/nonexistent/libnothing.so");
}
