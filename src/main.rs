//! `signet`: the CA operator's command line.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use signet::app::Signet;
use signet::audit::{read_chain, read_checkpoint_file, verify_chain, ChainWalk};
use signet::ca::{normalize_serial, CaError, Fault, IssuerId, Reason};
use signet::clock::Clock;
use signet::config::Config;
use signet::hsm::{self, PinSource};
use signet::ra::csr::MAX_CSR_BYTES;
use signet::ra::{CertificateRequest, Role, TenantIdentity};

// glibc's malloc showed as a sixth of the server's CPU under load (arena consolidation, free
// lists); mimalloc's thread-local pages cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for usage errors (sysexits EX_USAGE), also for clap's own.
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "signet",
    version,
    about = "HSM-backed certificate authority for banks"
)]
struct Cli {
    /// Config file (default: $SIGNET_HOME/signet.toml, else ./.signet/signet.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The HSM token.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The CA hierarchy: key ceremony, upgrade, export.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issue a certificate from a PKCS#10 CSR and the bank's vetted subject data.
    Issue {
        /// Profile name (a file in the policies folder): customer, teller, ...
        #[arg(long)]
        profile: String,
        /// The CSR file, PEM or DER.
        #[arg(long)]
        csr: PathBuf,
        /// The vetted subject, RFC 4514, e.g. "CN=张三,serialNumber=110101199003071234".
        #[arg(long)]
        subject: String,
        /// Write the certificate and its chain (PEM) here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Issue for this bank (tenant name): its name is the O and it owns the certificate.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a certificate.
    Revoke {
        #[arg(long)]
        serial: String,
        /// RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged,
        /// superseded, cessationOfOperation, privilegeWithdrawn.
        #[arg(long)]
        reason: String,
        /// When the key is known or suspected to have been compromised (RFC 3339, UTC).
        #[arg(long)]
        invalidity_date: Option<String>,
    },
    /// Put a certificate on hold (certificateHold), where its profile allows it.
    Hold {
        #[arg(long)]
        serial: String,
    },
    /// Release a certificate from hold.
    Release {
        #[arg(long)]
        serial: String,
    },
    /// Generate and sign the next CRL of an issuer (DER).
    Crl {
        /// root (the ARL), customer or teller.
        #[arg(long)]
        issuer: String,
        /// The shard, when the issuer's CRL is split.
        #[arg(long)]
        shard: Option<u32>,
        #[arg(long)]
        out: PathBuf,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Verify a signed payment instruction; prints the JSON report. Exit 0 TOTAL_PASSED,
    /// 1 TOTAL_FAILED, 2 INDETERMINATE, 3 could not decide, 64 usage.
    Verify {
        /// The instruction file (any format: JSON, XML, k=v&...).
        #[arg(long)]
        instruction: PathBuf,
        /// The signature: CMS (DER, PEM or base64) or JWS (compact or JSON).
        #[arg(long)]
        signature: PathBuf,
        /// Add a receipt signed by Signet (base64 DER in the report's `receipt` field).
        #[arg(long)]
        receipt: bool,
    },
    /// Verification receipts.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
    /// The bank's e-seal (a key in the HSM and its certificate).
    Seal {
        #[command(subcommand)]
        command: SealCommand,
    },
    /// Tellers as identities.
    Teller {
        #[command(subcommand)]
        command: TellerCommand,
    },
    /// Sign a file with a bank's e-seal key, as one of that bank's sealers (teller keys sign
    /// only through the API).
    Sign {
        /// The signing key's id (`signet seal create` prints it).
        #[arg(long)]
        key: String,
        /// File holding a `sealer` credential of the key's bank (`signet credential add
        /// --role sealer`): the e-seal signs only for its bank, on the CA host too.
        #[arg(long)]
        credential_file: PathBuf,
        #[arg(long = "in")]
        input: PathBuf,
        /// cms-detached, cms-attached or jws.
        #[arg(long, default_value = "cms-detached")]
        format: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve the REST API, CRLs and OCSP.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Load generator: drive a running Signet over HTTP with N clients for T seconds
    /// (issuance, verification, ocsp, mixed); optionally CFSSL beside it. Prints requests/s,
    /// latency percentiles, errors and the server's memory.
    Bench {
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// File holding an ra-officer bearer token (never give a token on the command line).
        #[arg(long)]
        token_file: PathBuf,
        /// File holding a gateway bearer token (for the verification scenario).
        #[arg(long)]
        gateway_token_file: Option<PathBuf>,
        /// Scenarios, comma-separated: issuance, verification, verification-batch, ocsp, mixed.
        #[arg(long, default_value = "issuance,ocsp", value_delimiter = ',')]
        scenario: Vec<String>,
        /// Concurrent clients (one keep-alive connection each).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Instructions per request of the verification-batch scenario (1 to 64).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of warm-up load before each measurement (not counted).
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Repeat every measurement this many times, interleaved; medians are printed.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// The server's process id, for its memory (default: the process listening on the port).
        #[arg(long)]
        server_pid: Option<u32>,
        /// Also start `cfssl serve` (this binary, e.g. `cfssl`) and run issuance against it.
        #[arg(long)]
        cfssl: Option<PathBuf>,
        /// With --cfssl: also run CFSSL recording every certificate in its SQLite certdb.
        #[arg(long)]
        cfssl_db: bool,
        /// The server's config: measure the raw SoftHSM2 sign rate in the same run.
        #[arg(long)]
        reference_config: Option<PathBuf>,
        /// Profile of the issuance requests.
        #[arg(long, default_value = "customer")]
        profile: String,
        /// Subject of the issuance requests (RFC 4514).
        #[arg(long, default_value = "CN=张三,serialNumber=110101199003071234")]
        subject: String,
    },
    /// Banks served by this CA.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// API credentials of a bank.
    Credential {
        #[command(subcommand)]
        command: CredentialCommand,
    },
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Check a receipt (DER or base64). Exit 0 valid, 1 invalid, 3 could not decide, 64 usage.
    Verify {
        #[arg(long)]
        receipt: PathBuf,
    },
}

#[derive(Subcommand)]
enum SealCommand {
    /// Make the bank's e-seal key in the token and its certificate (profile `seal`).
    Create {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum TellerCommand {
    /// Register a teller of a bank.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        employee: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Register a bank; NAME is its registered name, the O of its certificates.
    Add { name: String },
}

#[derive(Subcommand)]
enum CredentialCommand {
    /// Make a credential: prints the bearer token alone on stdout (once), its id on stderr.
    Add {
        #[arg(long)]
        tenant: String,
        /// ra-officer, teller-admin, gateway or auditor.
        #[arg(long)]
        role: String,
        /// Lifetime in days (default: [auth].credential_days, 365).
        #[arg(long)]
        days: Option<u32>,
        /// For --role teller: the teller's employee id (`signet teller add`).
        #[arg(long)]
        teller: Option<String>,
        /// The person the credential is for (an employee id or a name). The two-person rule
        /// tells people apart by it: give it to every teller-admin credential.
        #[arg(long)]
        holder: Option<String>,
    },
    /// List a bank's credentials (never their tokens).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Give a credential a new token: prints it alone on stdout (once); the old token stops
    /// working at once. The expiry starts again from now.
    Rotate {
        #[arg(long)]
        id: String,
        /// Lifetime of the new token in days (default: [auth].credential_days, 365).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Revoke a credential.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Name the person behind a credential made without --holder (once: a holder does not
    /// change).
    SetHolder {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        holder: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create and initialize the configured token (C_InitToken, C_InitPIN) with the PINs read
    /// from the files the config names. Does nothing when the token exists.
    Init,
}

#[derive(Subcommand)]
enum CaCommand {
    /// The key ceremony: root, customer CA, teller CA and audit keys, and their certificates.
    Init,
    /// Create only what is missing from an initialized CA.
    Upgrade,
    /// Write root.pem, customer-ca.pem and teller-ca.pem into a folder.
    Export {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the chain, its checkpoints and the checkpoint file.
    Verify,
    /// Record a loss of the chain's newest events that cannot be restored (a database restored
    /// from an older backup, an asynchronous standby promoted): lists the checkpoints that
    /// disagree with the chain; with --confirm, signs an acknowledgement that `audit verify`
    /// and every process then hold instead of them. The chain itself must be whole.
    Acknowledge {
        /// Why the events were lost: kept in the audit log and in the signed acknowledgement.
        #[arg(long)]
        reason: String,
        /// Sign and write the acknowledgement of the plan the listing named (without it,
        /// the listing only).
        #[arg(long, value_name = "PLAN")]
        confirm: Option<String>,
    },
}

/// A failure to report: one line on stderr and an exit status.
struct Failure {
    message: String,
    status: u8,
    /// A verdict (verify's 1 and 2, receipt's 1), not a failure to decide.
    verdict: bool,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            message: e.to_string(),
            status: 1,
            verdict: false,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIGNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("signet: error: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}

fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "operator".into());
    format!("cli:{user}")
}

/// A `--holder` in the form it is kept, or a usage error (exit 64) saying what one must be.
fn usable_holder(holder: &str) -> Result<String, Failure> {
    signet::ra::checked_holder(holder).map_err(|e| Failure {
        message: e.to_string(),
        status: EXIT_USAGE,
        verdict: false,
    })
}

fn progress(msg: &str) {
    eprintln!("signet: {msg}");
}

/// Exit status when Signet could not decide (store or HSM unreachable).
const EXIT_UNDECIDED: u8 = 3;

fn run(cli: Cli) -> Result<(), Failure> {
    let deciding = matches!(
        cli.command,
        Command::Verify { .. } | Command::Receipt { .. }
    );
    run_command(cli).map_err(|mut f| {
        // For verify and receipt, 1 and 2 are verdicts: any other failure is "could not decide".
        if deciding && !f.verdict && f.status == 1 {
            f.status = EXIT_UNDECIDED;
        }
        f
    })
}

fn run_command(cli: Cli) -> Result<(), Failure> {
    if let Command::Bench { .. } = &cli.command {
        return bench(cli.command);
    }
    let path = cli.config.clone().unwrap_or_else(Config::default_path);
    let config = Config::load(&path)?;
    config.apply_environment();
    let clock = Clock::from_env()?;

    if let Command::Token {
        command: TokenCommand::Init,
    } = &cli.command
    {
        return token_init(&config);
    }

    let fault = match std::env::var("SIGNET_FAULT").as_deref() {
        Ok("after-record") => Fault::AfterRecord,
        Ok("sign-fails") => Fault::SignFails,
        Ok("key-sign-fails") => Fault::KeySignFails,
        Ok(other) => {
            return Err(Failure {
                message: format!(
                    "SIGNET_FAULT={other:?} is not a known fault (after-record, sign-fails, key-sign-fails)"
                ),
                status: EXIT_USAGE,
                verdict: false,
            })
        }
        Err(_) => Fault::None,
    };
    let signet = Signet::open(config, clock, fault)?;
    let actor = actor();
    if let Command::Audit {
        command: AuditCommand::Verify,
    } = &cli.command
    {
        return audit_verify(&signet);
    }
    if let Command::Audit {
        command: AuditCommand::Acknowledge { reason, confirm },
    } = &cli.command
    {
        // Before `startup`: its checkpoint would only find the loss again.
        return audit_acknowledge(&signet, reason, confirm.as_deref(), &actor);
    }
    if let Command::Verify {
        instruction,
        signature,
        receipt,
    } = &cli.command
    {
        return verify(&signet, instruction, signature, *receipt, &actor);
    }
    if let Command::Receipt {
        command: ReceiptCommand::Verify { receipt },
    } = &cli.command
    {
        return receipt_verify(&signet, receipt);
    }
    let voided = signet.startup(&actor)?;
    for serial in &voided {
        progress(&format!(
            "voided interrupted issuance {serial}: it will be listed on the next CRL"
        ));
    }
    if let Command::Serve { listen } = &cli.command {
        return serve(signet, listen);
    }
    let result = command(&signet, cli.command, &actor);
    // Every command ends with a checkpoint of the chain head, so that removing the newest
    // events is caught even between periodic checkpoints.
    let closing = signet.shutdown();
    result?;
    if let Err(e @ CaError::Audit(signet::audit::AuditError::ChainAltered(_))) = &closing {
        // The command did what it was asked (a revocation must not read as failed to the
        // script that ran it); the chain's state is the operator's to look into.
        eprintln!(
            "signet: warning: {e}\nthe command itself completed and its changes are committed"
        );
        return Ok(());
    }
    closing.map_err(|e| Failure {
        message: format!(
            "{e}\nthe command itself completed and its changes are committed; only the closing \
             audit checkpoint failed: mend its cause, then run `signet audit verify`"
        ),
        status: 1,
        verdict: false,
    })?;
    Ok(())
}

fn command(signet: &Signet, command: Command, actor: &str) -> Result<(), Failure> {
    let authority = &signet.authority;
    match command {
        Command::Token { .. }
        | Command::Audit { .. }
        | Command::Serve { .. }
        | Command::Bench { .. }
        | Command::Verify { .. }
        | Command::Receipt { .. } => {
            unreachable!("handled before")
        }
        Command::Seal {
            command: SealCommand::Create { tenant },
        } => {
            let (key, issued) = signet.registrar.create_seal(&tenant, actor)?;
            println!("{}", key.id);
            progress(&format!(
                "e-seal of {tenant}: key {} (certificate serial {})",
                key.id, issued.serial
            ));
        }
        Command::Teller {
            command:
                TellerCommand::Add {
                    tenant,
                    employee,
                    name,
                },
        } => {
            let t = signet.registrar.tenant_by_name(&tenant)?;
            let identity = TenantIdentity {
                id: t.id,
                name: t.name,
            };
            let teller = signet
                .registrar
                .add_teller(&identity, &employee, &name, actor)?;
            println!("{}", teller.id);
            progress(&format!("teller {employee} of {tenant} registered"));
        }
        Command::Sign {
            key,
            credential_file,
            input,
            format,
            out,
        } => {
            let format = signet::sign::SignFormat::parse(&format).ok_or_else(|| Failure {
                message: format!(
                    "{format:?} is not a format: use cms-detached, cms-attached or jws"
                ),
                status: EXIT_USAGE,
                verdict: false,
            })?;
            let token =
                signet::ra::read_token_file(&credential_file).map_err(|message| Failure {
                    message,
                    status: EXIT_USAGE,
                    verdict: false,
                })?;
            let who = signet.registrar.authenticate(Some(&token), actor)?;
            let data = read_limited(&input, MAX_VERIFY_INPUT)?;
            let signed = signet.signing.sign(
                &who,
                &key,
                format,
                signet::sign::SignInput::Data(data),
                None,
            )?;
            let first = signed.signatures.into_iter().next().unwrap_or_default();
            let bytes = if format == signet::sign::SignFormat::Jws {
                first.into_bytes()
            } else {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(first)
                    .map_err(Failure::from)?
            };
            write_file(&out, &bytes)?;
            progress(&format!("signed {} with key {key}", input.display()));
        }
        Command::Tenant {
            command: TenantCommand::Add { name },
        } => {
            let t = signet.registrar.add_tenant(&name, actor)?;
            println!("{}", t.id);
            progress(&format!("tenant {:?} added as {}", t.name, t.id));
        }
        Command::Credential { command } => match command {
            CredentialCommand::Add {
                tenant,
                role,
                days,
                teller,
                holder,
            } => {
                let role = Role::parse(&role).ok_or_else(|| Failure {
                    message: format!(
                        "{role:?} is not a role: use {}",
                        Role::ALL.map(|r| r.as_str()).join(", ")
                    ),
                    status: EXIT_USAGE,
                    verdict: false,
                })?;
                let holder = holder.as_deref().map(usable_holder).transpose()?;
                let expires = days.map(|d| signet.clock.now() + i64::from(d) * 86_400);
                let cred = signet.registrar.add_credential(
                    &tenant,
                    role,
                    expires,
                    teller.as_deref(),
                    holder.as_deref(),
                    actor,
                )?;
                println!("{}", cred.token.as_str());
                eprintln!("credential {} ({role}) for {tenant}: keep the token above, it is not shown again", cred.id);
                if role == Role::TellerAdmin && holder.is_none() {
                    eprintln!("note: without --holder, the two-person rule tells this credential's holder apart from other teller-admins by the credential alone");
                }
            }
            CredentialCommand::List { tenant } => {
                for c in signet.registrar.credentials(&tenant)? {
                    let state = match (c.revoked_at, c.expires_at) {
                        (Some(_), _) => "revoked",
                        (None, Some(e)) if e <= signet.clock.now() => "expired",
                        _ => "active",
                    };
                    println!(
                        "{}\t{}\tcreated {}\texpires {}\t{state}\tholder {}",
                        c.id,
                        c.role,
                        c.created_at,
                        c.expires_at.map_or("never".to_string(), |e| e.to_string()),
                        c.holder
                            .as_deref()
                            .map_or("none".into(), |h| format!("{h:?}"))
                    );
                }
            }
            CredentialCommand::Rotate { id, days } => {
                let expires = days.map(|d| signet.clock.now() + i64::from(d) * 86_400);
                let cred = signet.registrar.rotate_credential(&id, expires, actor)?;
                println!("{}", cred.token.as_str());
                eprintln!(
                    "credential {} rotated: keep the token above, it is not shown again; the old one no longer works",
                    cred.id
                );
            }
            CredentialCommand::Revoke { tenant, id } => {
                signet.registrar.revoke_credential(&tenant, &id, actor)?;
                progress(&format!("credential {id} revoked"));
            }
            CredentialCommand::SetHolder { tenant, id, holder } => {
                usable_holder(&holder)?;
                let holder = signet
                    .registrar
                    .set_credential_holder(&tenant, &id, &holder, actor)?;
                progress(&format!("credential {id} is {holder:?}'s"));
            }
        },
        Command::Ca { command } => match command {
            CaCommand::Init => {
                let report = authority.init(actor, &progress)?;
                progress(&format!(
                    "CA initialized: {} keys in token {}; export the chain with `signet ca export --out DIR`",
                    report.created.len(),
                    signet.hsm.token_name()
                ));
            }
            CaCommand::Upgrade => {
                let mut report = authority.upgrade(actor, &progress)?;
                let bound = signet.signing.bind_pins_to_token(actor)?;
                if bound > 0 {
                    report
                        .created
                        .push(format!("{bound} PIN hash(es) bound to the token's PIN key"));
                }
                if let Some(tls) = signet
                    .config
                    .tls
                    .as_ref()
                    .filter(|t| !t.issue_names.is_empty())
                {
                    if authority.ensure_tls_server(
                        &tls.issue_names,
                        &tls.certificate,
                        &tls.key,
                        actor,
                        &progress,
                    )? {
                        report.created.push("TLS server certificate".into());
                    }
                }
                if report.created.is_empty() {
                    progress("nothing to upgrade: every key and certificate is present");
                } else {
                    progress(&format!("created: {}", report.created.join(", ")));
                }
            }
            CaCommand::Export { out } => {
                for p in authority.export(&out)? {
                    println!("{}", p.display());
                }
            }
        },
        Command::Issue {
            profile,
            csr,
            subject,
            out,
            tenant,
        } => {
            let csr_bytes = read_limited(&csr, MAX_CSR_BYTES)?;
            let tenant = match tenant {
                Some(name) => {
                    let t = signet.registrar.tenant_by_name(&name)?;
                    Some(TenantIdentity {
                        id: t.id,
                        name: t.name,
                    })
                }
                None => None,
            };
            let issued = match signet.registrar.issue(&CertificateRequest {
                profile: &profile,
                csr: &csr_bytes,
                subject: &subject,
                actor,
                break_glass: signet
                    .registrar
                    .profile(&profile)
                    .is_ok_and(|p| p.issuer == IssuerId::Teller),
                tenant: tenant.as_ref(),
            }) {
                Ok(i) => i,
                Err(signet::ra::RaError::Ca(CaError::FaultInjected { serial })) => {
                    eprintln!("serial {serial}");
                    return Err(Failure::from(format!(
                        "fault injected after recording serial {serial}"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let pem = issued.pem_with_chain();
            match out {
                Some(path) => write_file(&path, pem.as_bytes())?,
                None => std::io::stdout().write_all(pem.as_bytes())?,
            }
            eprintln!("serial {}", issued.serial);
        }
        Command::Revoke {
            serial,
            reason,
            invalidity_date,
        } => {
            let reason = Reason::parse_for_revocation(&reason)
                .ok_or_else(|| Failure {
                    message: format!(
                        "{reason:?} is not a revocation reason; use one of: {} (for certificateHold use `signet hold`)",
                        Reason::for_revocation()
                            .map(|r| r.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    status: EXIT_USAGE,
                    verdict: false,
                })?;
            let invalidity = invalidity_date.map(|d| parse_rfc3339(&d)).transpose()?;
            let serial = normalize_serial(&serial)?;
            authority.revoke(&serial, reason, invalidity, actor)?;
            progress(&format!(
                "revoked {serial} ({}); it appears on the next CRL",
                reason.name()
            ));
        }
        Command::Hold { serial } => {
            let serial = normalize_serial(&serial)?;
            authority.hold(&serial, signet.registrar.profiles(), actor)?;
            progress(&format!("{serial} is on hold"));
        }
        Command::Release { serial } => {
            let serial = normalize_serial(&serial)?;
            authority.release(&serial, actor)?;
            progress(&format!("{serial} is released from hold"));
        }
        Command::Crl { issuer, shard, out } => {
            let id = IssuerId::parse(&issuer).ok_or_else(|| Failure {
                message: format!("{issuer:?} is not an issuer: use root, customer or teller"),
                status: EXIT_USAGE,
                verdict: false,
            })?;
            let crl = authority.generate_crl(id, shard, actor)?;
            write_file(&out, &crl.der)?;
            progress(&format!(
                "CRL number {} of {id} written to {}",
                crl.number,
                out.display()
            ));
        }
    }
    Ok(())
}

/// Largest instruction or signature file read.
const MAX_VERIFY_INPUT: usize = 4 * 1024 * 1024;

fn verify(
    signet: &Signet,
    instruction: &Path,
    signature: &Path,
    want_receipt: bool,
    actor: &str,
) -> Result<(), Failure> {
    let usage = |f: Failure| Failure {
        status: EXIT_USAGE,
        ..f
    };
    let instruction = read_limited(instruction, MAX_VERIFY_INPUT).map_err(usage)?;
    let signature = read_limited(signature, MAX_VERIFY_INPUT).map_err(usage)?;
    let verifier = signet.verifier.as_ref().ok_or_else(|| {
        Failure::from(
            "verification is not configured: it needs an initialized CA and payment-signature.toml in the policies folder",
        )
    })?;
    let report = verifier.verify(&instruction, &signature, actor, None)?;
    let mut value = serde_json::to_value(&report)?;
    if want_receipt {
        value["receipt"] = serde_json::Value::String(signet::app::make_receipt(signet, &value)?);
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    match report.exit_code() {
        0 => Ok(()),
        code => Err(Failure {
            message: format!(
                "the signature is {}",
                serde_json::to_value(report.indication)?
                    .as_str()
                    .unwrap_or("not valid")
            ),
            status: code,
            verdict: true,
        }),
    }
}

fn receipt_verify(signet: &Signet, path: &Path) -> Result<(), Failure> {
    use base64::Engine;
    let raw = read_limited(path, MAX_VERIFY_INPUT).map_err(|f| Failure {
        status: EXIT_USAGE,
        ..f
    })?;
    let der = if raw.first() == Some(&0x30) {
        raw
    } else {
        let text: String = String::from_utf8_lossy(&raw)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| Failure {
                message: "the receipt is neither DER nor base64".into(),
                status: 1,
                verdict: true,
            })?
    };
    let root = signet.authority.ca(IssuerId::Root)?.certificate.clone();
    match signet::verify::receipt::verify_receipt(&der, &[root]) {
        Ok(info) => {
            println!("{}", serde_json::to_string_pretty(&info.report)?);
            eprintln!(
                "receipt valid: signed by {} at Unix time {}",
                info.signer_subject, info.signing_time
            );
            Ok(())
        }
        Err(e) => Err(Failure {
            message: format!("receipt invalid: {e}"),
            status: 1,
            verdict: true,
        }),
    }
}

/// Threads that run requests' blocking work (HSM calls, store, cryptography): enough to keep
/// the HSM's sessions and the group commit busy on a few cores, few enough to bound memory.
const MAX_BLOCKING_THREADS: usize = 32;

fn bench(command: Command) -> Result<(), Failure> {
    use signet::loadgen::{Options, Scenario};
    let Command::Bench {
        server,
        token_file,
        gateway_token_file,
        scenario,
        clients,
        batch,
        duration,
        warmup,
        rounds,
        server_pid,
        cfssl,
        cfssl_db,
        reference_config,
        profile,
        subject,
    } = command
    else {
        unreachable!("called for bench only")
    };
    let usage = |message: String| Failure {
        message,
        status: EXIT_USAGE,
        verdict: false,
    };
    let mut scenarios = Vec::new();
    for s in &scenario {
        scenarios.push(Scenario::parse(s.trim()).ok_or_else(|| {
            usage(format!(
                "unknown scenario {s:?} (issuance, verification, verification-batch, ocsp, mixed)"
            ))
        })?);
    }
    let seconds = |name: &str, v: f64| {
        if v.is_finite() && (0.0..=3600.0).contains(&v) {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(usage(format!(
                "--{name} must be between 0 and 3600 seconds"
            )))
        }
    };
    let options = Options {
        server,
        token_file,
        gateway_token_file,
        scenarios,
        clients,
        batch,
        duration: seconds("duration", duration)?,
        warmup: seconds("warmup", warmup)?,
        rounds,
        server_pid,
        cfssl,
        cfssl_db,
        reference_config,
        profile,
        subject,
    };
    let report = signet::loadgen::run(&options).map_err(|e| {
        let status = match e {
            signet::loadgen::LoadError::Usage(_) => EXIT_USAGE,
            _ => 1,
        };
        Failure {
            message: e.to_string(),
            status,
            verdict: false,
        }
    })?;
    print!("{}", report.render(&options));
    Ok(())
}

fn serve(signet: Signet, listen: &str) -> Result<(), Failure> {
    if !signet.authority.is_initialized() {
        return Err(CaError::NotInitialized.into());
    }
    // Read the TLS files before serving: a bad certificate or key stops the start.
    let tls = match &signet.config.tls {
        Some(cfg) => Some(
            signet::api::tls::TlsSetup::load(cfg, signet.clock.clone())
                .map_err(|e| Failure::from(e.to_string()))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Requests do their HSM, store and crypto work on blocking threads. Tokio's default
        // (512) let the server's memory follow its client count: 120 threads and 258 MiB
        // resident at 64 issuance clients. Past this many, requests queue for a thread.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Failure::from(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        let hsm = signet.config.hsm_config();
        eprintln!(
            "signet: HSM module {}, token {} (PIN from {})",
            hsm.module.display(),
            hsm.token,
            hsm.pin.describe()
        );
        // Handlers first: a SIGTERM right after the line below must stop the service gracefully,
        // not kill it with the signal's default action.
        let shutdown = shutdown_signal()?;
        // The one line scripts wait for.
        eprintln!("signet: serving on {scheme}://{addr}");
        signet::api::serve(signet, listener, tls, shutdown)
            .await
            .map_err(Failure::from)
    })
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called,
/// inside the runtime, not when the future is first polled.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = interrupt.recv() => {},
        }
        eprintln!("signet: shutting down: finishing requests in flight");
    })
}

fn token_init(config: &Config) -> Result<(), Failure> {
    let so = config.hsm.so_pin_file.clone().ok_or_else(|| Failure {
        message: "[hsm].so_pin_file is not set: token init needs the SO PIN file".into(),
        status: EXIT_USAGE,
        verdict: false,
    })?;
    let user = config.hsm_config().pin;
    let label = &config.hsm.token;
    if label.starts_with("pkcs11:") {
        return Err(Failure {
            message: "token init needs a plain token label in [hsm].token, not a URI".into(),
            status: EXIT_USAGE,
            verdict: false,
        });
    }
    let created = hsm::init_token(&config.hsm.module, label, &PinSource::File(so), &user)?;
    if created {
        progress(&format!("token {label:?} created"));
    } else {
        progress(&format!("token {label:?} already exists; nothing changed"));
    }
    Ok(())
}

fn audit_verify(signet: &Signet) -> Result<(), Failure> {
    let audit_row = signet
        .store
        .cas()?
        .into_iter()
        .find(|c| c.name == "audit")
        .ok_or(CaError::NotInitialized)?;
    // The key comes from the token, not the database: a rewritten database cannot bring its own.
    let key = signet.hsm.public_key(&audit_row.key_label)?;
    let key = p256::ecdsa::VerifyingKey::from(&key);
    // The checkpoints first, the chain after: each checkpoint read is of an event the chain
    // read reaches, whatever other processes append meanwhile.
    let file = read_checkpoint_file(&signet.config.audit.checkpoint_file);
    let db_cps = signet.store.checkpoints()?;
    let result = match file {
        Ok(file) => {
            let walk = ChainWalk::for_checkpoints(&db_cps, &file);
            let mut shown = 0;
            read_chain(&*signet.store, walk, |read, head| {
                // A long chain shows its progress by tenths.
                if head >= 1_000_000 && read * 10 / head > shown {
                    shown = read * 10 / head;
                    progress(&format!("audit verify: {read} of {head} events read"));
                }
            })?
            .and_then(|walk| verify_chain(&walk, &db_cps, &file, &key))
        }
        Err(b) => Err(b),
    };
    match result {
        Ok(r) => {
            println!(
                "audit chain intact: {} events, {} checkpoints{}",
                r.events,
                r.checkpoints,
                r.last_checkpoint
                    .zip(r.last_checkpoint_at)
                    .map(|(s, at)| format!(
                        ", last at event {s} ({})",
                        signet::verify::report::rfc3339(at)
                    ))
                    .unwrap_or_default()
            );
            let superseded: Vec<&(u64, Vec<u8>)> =
                r.acknowledged.iter().flat_map(|a| &a.supersedes).collect();
            for a in &r.acknowledged {
                if superseded.contains(&&(a.head, a.head_hash.clone())) {
                    println!(
                        "acknowledged loss at event {} ({}): {} checkpoints left out; its head was \
                         lost again, and a later acknowledgement supersedes it; reason: {}",
                        a.head,
                        signet::verify::report::rfc3339(a.at),
                        a.voids.len(),
                        a.reason
                    );
                    continue;
                }
                println!(
                    "acknowledged loss at event {} ({}): {} checkpoints of lost events left out, \
                     events {} to {} taken on the database's word; reason: {}",
                    a.head,
                    signet::verify::report::rfc3339(a.at),
                    a.voids.len(),
                    a.agreed + 1,
                    a.head,
                    a.reason
                );
            }
            Ok(())
        }
        Err(b) => Err(Failure {
            message: format!("audit chain broken: {b}"),
            status: 1,
            verdict: true,
        }),
    }
}

fn audit_acknowledge(
    signet: &Signet,
    reason: &str,
    confirm: Option<&str>,
    actor: &str,
) -> Result<(), Failure> {
    signet::audit::check_reason(reason).map_err(|message| Failure {
        message,
        status: EXIT_USAGE,
        verdict: false,
    })?;
    if !signet.authority.is_initialized() {
        return Err(CaError::NotInitialized.into());
    }
    let auditor = signet.authority.auditor();
    let loss = auditor.loss_to_acknowledge()?;
    if !loss.is_empty() {
        list_loss(&loss);
    }
    let Some(plan_id) = confirm else {
        if loss.is_empty() {
            println!(
                "nothing to acknowledge: every checkpoint agrees with the chain ({} events)",
                loss.events
            );
            if loss.voided_rows_left > 0 {
                println!(
                    "{} checkpoints an acknowledgement voids are still in the database (a run \
                     stopped before removing them): run again with --confirm any to remove them",
                    loss.voided_rows_left
                );
            }
            return Ok(());
        }
        return Err(Failure::from(format!(
            "nothing written. Stop every signet process of this CA, on every host (one that \
             ran through the loss would sign the lost events again as it stops), then run \
             again with --confirm {} to sign the acknowledgement of this loss, and start them \
             after",
            loss.id()
        )));
    };
    match auditor.acknowledge_loss(actor, reason, plan_id)? {
        Some(ack) => {
            println!(
                "acknowledged: the chain is accepted up to event {}, {} checkpoints left out",
                ack.head,
                ack.voids.len()
            );
            progress("start this CA's processes again; on another host with its own checkpoint file, run this command there too");
        }
        None => {
            println!(
                "nothing to acknowledge: every checkpoint agrees with the chain ({} events)",
                loss.events
            );
            // An acknowledgement written by a run that stopped before its checkpoint gets one.
            auditor.checkpoint_head()?;
        }
    }
    Ok(())
}

/// What `audit acknowledge` would sign, for the operator to review.
fn list_loss(loss: &signet::audit::LossToAcknowledge) {
    println!(
        "{} with the chain ({} events):",
        match loss.voids.len() {
            1 => "1 checkpoint disagrees".to_string(),
            n => format!("{n} checkpoints disagree"),
        },
        loss.events
    );
    for cp in &loss.voids {
        println!(
            "  event {} (checkpointed {}): {}",
            cp.seq,
            signet::verify::report::rfc3339(cp.at),
            if cp.seq > loss.events {
                "past the chain's head"
            } else {
                "another event is there now"
            }
        );
    }
    for (head, _) in &loss.supersedes {
        println!("  the acknowledgement up to event {head}: its head was lost again");
    }
    if loss.agreed < loss.events {
        println!(
            "events {} to {} are then taken on the database's word: no checkpoint that still \
             holds covers them (a lost tail and one rewritten with its hashes recomputed look \
             the same; the database's own records must tell which this is)",
            loss.agreed + 1,
            loss.events
        );
    }
    println!("plan {}", loss.id());
}

fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, Failure> {
    let f = std::fs::File::open(path)
        .map_err(|e| Failure::from(format!("cannot read {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::from(format!("cannot read {}: {e}", path.display())))?;
    if buf.len() > limit {
        return Err(Failure::from(format!(
            "{} is larger than {limit} bytes: not a CSR",
            path.display()
        )));
    }
    Ok(buf)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, bytes)
        .map_err(|e| Failure::from(format!("cannot write {}: {e}", path.display())))
}

fn parse_rfc3339(s: &str) -> Result<i64, Failure> {
    signet::clock::parse_utc(s).ok_or_else(|| Failure {
        message: format!("{s:?} is not a UTC time like 2026-11-01T00:00:00Z"),
        status: EXIT_USAGE,
        verdict: false,
    })
}
