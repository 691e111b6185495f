//! softhsm/setup.sh and `signet token init`: idempotent, private PIN files, no
//! PIN in any output.
//!
//! The tests of this binary take turns (SERIAL): rerunning `token init` while
//! another process logs in to the same token is not what they test.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn rerun_setup(f: &Fixture) -> Out {
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm/setup.sh"))
        .env("SIGNET_HOME", &f.home)
        .env("SIGNET_BIN", SIGNET_BIN)
        .env_remove("SOFTHSM2_CONF");
    run(cmd)
}

fn pins(f: &Fixture) -> (String, String) {
    (
        fs::read_to_string(f.home.join("so.pin")).unwrap(),
        fs::read_to_string(f.home.join("user.pin")).unwrap(),
    )
}

#[test]
fn setup_sh_twice_keeps_pins_config_token_and_ca() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    let before_pins = pins(f);
    let before_config = fs::read_to_string(&f.config).unwrap();
    let tokens_before = fs::read_dir(f.home.join("tokens")).unwrap().count();

    let out = rerun_setup(f);
    out.assert_ok();
    assert!(
        out.stdout.contains(&format!(
            "export SOFTHSM2_CONF={}",
            f.softhsm2_conf.display()
        )),
        "setup.sh does not print the SOFTHSM2_CONF export\n{}",
        out.describe()
    );
    assert_eq!(pins(f), before_pins, "PIN files changed");
    assert_eq!(
        fs::read_to_string(&f.config).unwrap(),
        before_config,
        "signet.toml changed"
    );
    assert_eq!(
        fs::read_dir(f.home.join("tokens")).unwrap().count(),
        tokens_before,
        "a second token was created"
    );
    let again = f.path("ca-again");
    f.signet(&args!["ca", "export", "--out", &again])
        .assert_ok();
    assert_eq!(
        fs::read(again.join("root.pem")).unwrap(),
        fs::read(f.ca("root.pem")).unwrap()
    );
    f.issue_customer();
}

#[test]
fn pin_files_are_private_random_and_distinct() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    for name in ["so.pin", "user.pin"] {
        let p = f.home.join(name);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        let pin = fs::read_to_string(&p).unwrap();
        assert_eq!(pin.len(), 32, "{name} is not 32 characters");
        assert!(
            pin.chars().all(|c| c.is_ascii_hexdigit()),
            "{name} is not hex"
        );
    }
    let (so, user) = pins(f);
    assert_ne!(so, user);
}

#[test]
fn no_pin_appears_in_setup_or_signet_output() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    let (so, user) = pins(f);
    let outs = [
        rerun_setup(f),
        f.signet(&args!["token", "init"]),
        f.signet(&args!["ca", "init"]),
        f.issue_customer().out,
    ];
    for out in &outs {
        for pin in [&so, &user] {
            assert!(
                !out.stdout.contains(pin.trim()) && !out.stderr.contains(pin.trim()),
                "a PIN appears in the output\n{}",
                out.describe()
            );
        }
    }
}

#[test]
fn token_init_when_the_token_exists_changes_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    let tokens_before = fs::read_dir(f.home.join("tokens")).unwrap().count();
    let out = f.signet(&args!["token", "init"]);
    out.assert_ok();
    assert_eq!(
        fs::read_dir(f.home.join("tokens")).unwrap().count(),
        tokens_before
    );
    f.issue_teller();
}
