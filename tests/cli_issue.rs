//! `signet issue`: certificates that OpenSSL accepts, with the subject the bank
//! vetted, encoded the way RFC 5280 and pkilint want.

mod common;

use common::*;
use std::fs;
use std::path::Path;

fn verify(leaf: &Path, issuing_ca: &str) -> Out {
    let f = fixture();
    openssl(&args![
        "verify",
        "-x509_strict",
        "-CAfile",
        &f.ca("root.pem"),
        "-untrusted",
        &f.ca(issuing_ca),
        leaf
    ])
}

fn subject_utf8(cert: &Path) -> Out {
    let out = openssl(&args![
        "x509", "-in", cert, "-noout", "-subject", "-nameopt", "utf8"
    ]);
    out.assert_ok();
    out
}

#[test]
fn customer_cert_from_openssl_p256_csr_passes_openssl_verify_x509_strict() {
    let issued = fixture().issue_customer();
    let out = verify(&issued.leaf, "customer-ca.pem");
    out.assert_ok();
    assert!(
        out.stdout.trim_end().ends_with(": OK"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_csr_with_a_compressed_p256_point_gets_a_certificate_with_the_point_uncompressed() {
    let f = fixture();
    let (key, compressed, csr) = (
        f.path("compressed.key"),
        f.path("compressed-form.key"),
        f.path("compressed.csr"),
    );
    openssl(&args![
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &key
    ])
    .assert_ok();
    openssl(&args![
        "ec",
        "-in",
        &key,
        "-conv_form",
        "compressed",
        "-out",
        &compressed
    ])
    .assert_ok();
    openssl(&args![
        "req",
        "-new",
        "-key",
        &compressed,
        "-subj",
        "/CN=c",
        "-out",
        &csr
    ])
    .assert_ok();
    let point_of = |args: Vec<std::ffi::OsString>| {
        let out = openssl(&args);
        out.assert_ok();
        // `pub:` then the point as colon-separated hex over a few lines.
        let text = out.stdout;
        let hex: String = text
            .split("pub:")
            .nth(1)
            .unwrap_or_else(|| panic!("no public key in\n{text}"))
            .lines()
            .skip(1)
            .take_while(|l| {
                let l = l.trim();
                !l.is_empty() && l.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
            })
            .collect::<String>()
            .chars()
            .filter(char::is_ascii_hexdigit)
            .collect();
        hex
    };
    let asked = point_of(args!["req", "-in", &csr, "-noout", "-text"].to_vec());
    assert_eq!(asked.len(), 66, "the CSR's point is compressed: {asked}");
    let issued = f.issue_with(
        &f.config,
        "customer",
        &csr,
        "CN=张三,serialNumber=110101199003071234",
        &[],
    );
    let certified = point_of(args!["x509", "-in", &issued.leaf, "-noout", "-text"].to_vec());
    assert_eq!(certified.len(), 130, "uncompressed: 04, x, y: {certified}");
    assert!(certified.starts_with("04"), "{certified}");
    assert_eq!(&certified[2..66], &asked[2..], "the same x");
    // The certificate's key is the CSR's key: it verifies a signature made with it.
    verify(&issued.leaf, "customer-ca.pem").assert_ok();
    let (msg, sig) = (f.path("compressed.msg"), f.path("compressed.sig"));
    fs::write(&msg, b"signed with the compressed key").unwrap();
    openssl(&args!["dgst", "-sha256", "-sign", &key, "-out", &sig, &msg]).assert_ok();
    let pubkey = f.path("compressed-cert.pub");
    openssl(&args![
        "x509",
        "-in",
        &issued.leaf,
        "-noout",
        "-pubkey",
        "-out",
        &pubkey
    ])
    .assert_ok();
    openssl(&args![
        "dgst",
        "-sha256",
        "-verify",
        &pubkey,
        "-signature",
        &sig,
        &msg
    ])
    .assert_ok();
}

#[test]
fn teller_cert_from_openssl_p256_csr_passes_openssl_verify_x509_strict() {
    let issued = fixture().issue_teller();
    let out = verify(&issued.leaf, "teller-ca.pem");
    out.assert_ok();
    assert!(
        out.stdout.trim_end().ends_with(": OK"),
        "{}",
        out.describe()
    );
}

#[test]
fn customer_cert_does_not_chain_to_the_teller_ca() {
    let issued = fixture().issue_customer();
    let out = verify(&issued.leaf, "teller-ca.pem");
    assert!(
        !out.success(),
        "customer cert verified under the teller CA\n{}",
        out.describe()
    );
}

#[test]
fn issue_prints_leaf_then_issuing_ca_on_stdout_and_serial_on_stderr() {
    let f = fixture();
    let csr = f.csr(KeyKind::P256);
    let out = f.signet(&args![
        "issue",
        "--profile",
        "customer",
        "--csr",
        &csr,
        "--subject",
        "CN=王五,serialNumber=110101198001011234"
    ]);
    out.assert_ok();
    let blocks = pem_blocks(&out.stdout);
    assert_eq!(
        blocks.len(),
        2,
        "expected leaf + issuing CA\n{}",
        out.describe()
    );
    let ca = fs::read_to_string(f.ca("customer-ca.pem")).unwrap();
    assert_eq!(
        blocks[1].trim(),
        ca.trim(),
        "second certificate is not customer-ca.pem\n{}",
        out.describe()
    );
    let serial = serial_from_stderr(&out)
        .unwrap_or_else(|| panic!("no `serial <hex>` line\n{}", out.describe()));
    let leaf = f.path("stdout-leaf.pem");
    fs::write(&leaf, &blocks[0]).unwrap();
    let x = openssl(&args!["x509", "-in", &leaf, "-noout", "-serial"]);
    x.assert_ok();
    let printed = x.stdout.trim().trim_start_matches("serial=");
    assert_eq!(
        norm_serial(printed),
        norm_serial(&serial),
        "stderr serial differs from the certificate's"
    );
}

#[test]
fn issue_with_out_writes_leaf_then_issuing_ca_to_the_file() {
    let f = fixture();
    let issued = f.issue_teller();
    let blocks = pem_blocks(&fs::read_to_string(&issued.chain).unwrap());
    assert_eq!(
        blocks.len(),
        2,
        "expected leaf + issuing CA in {}",
        issued.chain.display()
    );
    let ca = fs::read_to_string(f.ca("teller-ca.pem")).unwrap();
    assert_eq!(
        blocks[1].trim(),
        ca.trim(),
        "second certificate is not teller-ca.pem"
    );
    assert!(
        !issued.out.stdout.contains("BEGIN CERTIFICATE"),
        "--out given but the certificate also went to stdout\n{}",
        issued.out.describe()
    );
}

#[test]
fn serials_are_about_128_random_bits_positive_and_distinct() {
    let f = fixture();
    let a = f.issue_customer();
    let b = f.issue_customer();
    for s in [&a.serial, &b.serial] {
        // 16 random bytes; a leading zero byte may be dropped.
        let n = norm_serial(s);
        assert!(n.len() > 16 && n.len() <= 32, "serial {s} is not ~128 bits");
    }
    assert_ne!(norm_serial(&a.serial), norm_serial(&b.serial));
    let x = openssl(&args!["x509", "-in", &a.leaf, "-noout", "-serial"]);
    x.assert_ok();
    assert!(!x.stdout.contains('-'), "negative serial\n{}", x.describe());
}

#[test]
fn issued_cert_is_recorded_as_issued_in_the_store() {
    let f = fixture();
    let issued = f.issue_customer();
    assert_eq!(
        cert_status(&f.db, &issued.serial).as_deref(),
        Some("issued")
    );
}

#[test]
fn chinese_common_name_round_trips_through_openssl_utf8_subject() {
    let f = fixture();
    let issued = f.issue(
        Profile::Customer,
        "CN=欧阳娜娜,serialNumber=11010119900307123X",
    );
    let out = subject_utf8(&issued.leaf);
    assert!(out.stdout.contains("CN=欧阳娜娜"), "{}", out.describe());
    assert!(
        out.stdout.contains("serialNumber=11010119900307123X"),
        "{}",
        out.describe()
    );
}

#[test]
fn subject_takes_organization_and_country_from_config() {
    let f = fixture();
    let issued = f.issue_teller();
    let out = subject_utf8(&issued.leaf);
    for part in [
        "C=CN",
        "O=Signet Demo Bank",
        "OU=Beijing Haidian Branch",
        "CN=李四",
        "serialNumber=E0012345",
    ] {
        assert!(
            out.stdout.contains(part),
            "subject lacks {part}\n{}",
            out.describe()
        );
    }
}

/// The ASN.1 string type of every `attr` value in a certificate (issuer and subject).
fn string_types(cert: &Path, attr: &str) -> Vec<String> {
    let out = openssl(&args!["asn1parse", "-in", cert]);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let mut types = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("OBJECT") && l.trim_end().ends_with(&format!(":{attr}")) {
            // "   58:d=5  hl=2 l=   2 prim: PRINTABLESTRING   :CN"
            let next = lines.get(i + 1).copied().unwrap_or("");
            let ty = next
                .split("prim:")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            types.push(ty);
        }
    }
    types
}

#[test]
fn country_and_serial_number_are_printable_strings() {
    let f = fixture();
    for (issued, ca) in [
        (f.issue_customer(), "customer-ca.pem"),
        (f.issue_teller(), "teller-ca.pem"),
    ] {
        let c = string_types(&issued.leaf, "countryName");
        assert_eq!(
            c,
            ["PRINTABLESTRING", "PRINTABLESTRING"],
            "countryName in issuer and subject of {}",
            issued.leaf.display()
        );
        let sn = string_types(&issued.leaf, "serialNumber");
        assert_eq!(
            sn,
            ["PRINTABLESTRING"],
            "subject serialNumber of {}",
            issued.leaf.display()
        );
        for cert in ["root.pem", ca] {
            let c = string_types(&f.ca(cert), "countryName");
            assert!(
                !c.is_empty() && c.iter().all(|t| t == "PRINTABLESTRING"),
                "countryName in {cert}: {c:?}"
            );
        }
    }
}

#[test]
fn names_other_than_country_and_serial_number_are_utf8_strings() {
    let f = fixture();
    let issued = f.issue_teller();
    for attr in ["commonName", "organizationName", "organizationalUnitName"] {
        let t = string_types(&issued.leaf, attr);
        assert!(
            !t.is_empty() && t.iter().all(|t| t == "UTF8STRING"),
            "{attr}: {t:?}"
        );
    }
}
