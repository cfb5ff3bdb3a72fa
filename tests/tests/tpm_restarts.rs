//! TPM restarts the way `make dev` does them (`scripts/dev.sh stop` then `start`: SIGTERM to
//! custodyd, `swtpm/swtpm-stop`, `swtpm/swtpm-start`, custodyd again) must be clean power cycles.
//!
//! An unclean one (swtpm powered off without TPM2_Shutdown) after a DA-protected key was used —
//! the MOSIP machine keys have no noDA attribute — counts as a failed authorization at the next
//! TPM2_Startup; with the simulator's default parameters the third such restart put the dev TPM in
//! dictionary-attack lockout and `machine-sign` failed with TPM_RC_LOCKOUT (0x921).
//!
//! The state is read with `tpm2_getcap properties-variable`: `TPM2_PT_LOCKOUT_COUNTER`,
//! `inLockout`, and `TPMA_STARTUP_CLEAR.orderly`, which says whether the last TPM2_Startup was
//! preceded by a TPM2_Shutdown (independent of timing, unlike the counter, which heals one step
//! per recovery interval).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use custody_testkit::proto::ops::{names, SignArgs, SignResult};
use custody_testkit::*;

const SEC: Duration = Duration::from_secs(1);

/// The MOSIP signing key (K10), declared in the TPM as in `scripts/dev.sh`.
const MACHINE_SIGN: &str = r#"[[keys.declare]]
name = "machine-sign"
kind = "rsa2048-sign"
backend = "tpm"
template = "mosip"
"#;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Dictionary-attack state of a TPM, from `tpm2_getcap properties-variable`.
#[derive(Debug, PartialEq, Eq)]
struct DaState {
    /// TPM2_PT_LOCKOUT_COUNTER.
    counter: u32,
    /// TPMA_PERMANENT.inLockout.
    in_lockout: bool,
    /// TPMA_STARTUP_CLEAR.orderly: the last TPM2_Startup followed a TPM2_Shutdown.
    orderly: bool,
    /// TPM2_PT_MAX_AUTH_FAIL.
    max_tries: u32,
    /// TPM2_PT_LOCKOUT_INTERVAL (s).
    recovery_time: u32,
    /// TPM2_PT_LOCKOUT_RECOVERY (s).
    lockout_recovery: u32,
}

fn da_state(tcti: &str) -> DaState {
    let out = run_with_timeout(
        Command::new("tpm2_getcap")
            .arg("properties-variable")
            .env("TPM2TOOLS_TCTI", tcti)
            .env("TSS2_LOG", "all+none"),
        30 * SEC,
    );
    assert!(out.status.success(), "tpm2_getcap: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // `  inLockout:   0` (a bit of a TPMA_*) or `TPM2_PT_LOCKOUT_COUNTER: 0x0` (a hex value).
    let field = |name: &str| -> u32 {
        let v = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in tpm2_getcap output:\n{stdout}"))
            .trim();
        match v.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16),
            None => v.parse(),
        }
        .unwrap_or_else(|e| panic!("{name}: {v:?}: {e}"))
    };
    DaState {
        counter: field("TPM2_PT_LOCKOUT_COUNTER"),
        in_lockout: field("inLockout") != 0,
        orderly: field("orderly") != 0,
        max_tries: field("TPM2_PT_MAX_AUTH_FAIL"),
        recovery_time: field("TPM2_PT_LOCKOUT_INTERVAL"),
        lockout_recovery: field("TPM2_PT_LOCKOUT_RECOVERY"),
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Writes `machine-sign`'s public key as PEM to the daemon's directory (`pub.pem`), which
/// `sign_and_verify` checks signatures against.
fn save_machine_public_pem(d: &Daemon) -> PathBuf {
    let pem = d.dir().join("pub.pem");
    let out = d.cli(&[
        "keys",
        "public",
        "machine-sign",
        "--format",
        "pem",
        "--out",
        path_str(&pem),
    ]);
    assert!(out.status.success(), "keys public: {}", text(&out));
    pem
}

/// The CLI arguments of `custody tpm clear-lockout` with the authorization in `file`.
fn clear_lockout(file: &Path) -> [&str; 4] {
    [
        "tpm",
        "clear-lockout",
        "--lockout-auth-file",
        path_str(file),
    ]
}

/// Signs `data` with `machine-sign` through the CLI and verifies the signature with openssl
/// against `pub.pem` (exported once, so the key is also the same one after every restart).
fn sign_and_verify(d: &Daemon, tag: &str) {
    let dir = d.dir().to_path_buf();
    let data = dir.join(format!("data.{tag}"));
    let sig = dir.join(format!("sig.{tag}"));
    std::fs::write(&data, format!("packet signed {tag}")).unwrap();
    let out = d.cli(&[
        "sign",
        "machine-sign",
        "--in",
        path_str(&data),
        "--out",
        path_str(&sig),
    ]);
    assert!(out.status.success(), "{tag}: sign failed: {}", text(&out));
    let out = run_with_timeout(
        Command::new("openssl")
            .current_dir(&dir)
            .args(["dgst", "-sha256", "-verify", "pub.pem", "-signature"])
            .arg(&sig)
            .arg(&data),
        30 * SEC,
    );
    assert!(
        out.status.success() && text(&out).contains("Verified OK"),
        "{tag}: openssl: {}",
        text(&out)
    );
}

#[test]
fn five_swtpm_restarts_with_signing_leave_no_lockout() {
    let mut d = DaemonBuilder::new().with_tpm().extra(MACHINE_SIGN).start();
    save_machine_public_pem(&d);
    sign_and_verify(&d, "before");

    for i in 1..=5 {
        // As `scripts/dev.sh stop`: the daemon first, then swtpm; then `start`.
        assert_eq!(d.terminate().code(), Some(0), "custodyd exit, restart {i}");
        let t = d.swtpm().expect("swtpm");
        t.stop();
        t.start_again();
        // Right after the TPM2_Startup, before anything uses the TPM: an unclean power cycle
        // shows here (orderly 0, counter already incremented, not yet healed).
        let st = da_state(t.tcti());
        assert!(
            st.orderly && st.counter == 0 && !st.in_lockout,
            "restart {i} was not an orderly TPM shutdown: {st:?}"
        );
        d.restart();
        sign_and_verify(&d, &format!("after-restart-{i}"));
    }

    sign_and_verify(&d, "end");
    let tcti = d.swtpm().expect("swtpm").tcti().to_owned();
    let st = da_state(&tcti);
    assert_eq!(st.counter, 0, "lockout counter after 5 restarts: {st:?}");
    assert!(!st.in_lockout, "TPM in lockout after 5 restarts: {st:?}");
    assert_eq!(d.terminate().code(), Some(0));
}

/// swtpm-stop under a daemon that keeps signing (not stopped first, unlike `scripts/dev.sh`): the
/// TPM2_Shutdown must still be the last command before the power-off. A DA-protected signature
/// squeezed in between would make the power cycle unclean again (it did, 3 times out of 4, with
/// a separate `tpm2_shutdown` followed by `swtpm_ioctl -s`).
#[test]
fn swtpm_stop_is_orderly_while_the_daemon_keeps_signing() {
    let mut d = DaemonBuilder::new().with_tpm().extra(MACHINE_SIGN).start();
    let socket = d.socket().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let signer = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let c = BlockingClient::connect(&socket).expect("connect");
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let r: Result<SignResult, _> = c.call_untyped(
                    names::SIGN,
                    &SignArgs {
                        key: "machine-sign".into(),
                        data: Some(format!("busy {i}").into_bytes()),
                        digest: None,
                        scheme: None,
                    },
                );
                match r {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    let tcti = d.swtpm().expect("swtpm").tcti().to_owned();
    for i in 1..=3 {
        // Stop while signatures are going through.
        let before = ok.load(Ordering::SeqCst);
        wait_for(30 * SEC, "the daemon to be signing", || {
            (ok.load(Ordering::SeqCst) >= before + 5).then_some(())
        });
        let t = d.swtpm().expect("swtpm");
        t.stop();
        t.start_again();
        assert_eq!(t.tcti(), tcti, "swtpm came back on another port");
        let st = da_state(t.tcti());
        assert!(
            st.orderly && st.counter == 0 && !st.in_lockout,
            "cycle {i}: swtpm-stop under a signing daemon was not orderly: {st:?}"
        );
    }
    wait_for(30 * SEC, "signing to work again", || {
        let n = ok.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        (ok.load(Ordering::SeqCst) > n).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    signer.join().expect("signer thread");
    assert!(
        failed.load(Ordering::SeqCst) > 0,
        "no signature failed: the TPM was never down while the daemon signed"
    );
    let st = da_state(&tcti);
    assert_eq!((st.counter, st.in_lockout), (0, false), "{st:?}");
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn fresh_swtpm_state_gets_short_da_parameters_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Swtpm::start(dir.path().join("swtpm"));
    let st = da_state(t.tcti());
    assert_eq!(
        (st.max_tries, st.recovery_time, st.lockout_recovery),
        (32, 5, 10),
        "DA parameters of a fresh swtpm: {st:?}"
    );
    assert!(
        !dir.path().join("swtpm/da-setup").exists(),
        "provisioning marker left behind"
    );

    // They are TPM state: kept across a restart, and not provisioned again (a second
    // tpm2_dictionarylockout would fail anyway if the lockout auth had been set meanwhile).
    let out = run_with_timeout(
        Command::new("tpm2_dictionarylockout")
            .args([
                "--setup-parameters",
                "--max-tries=7",
                "--recovery-time=9",
                "--lockout-recovery-time=11",
            ])
            .env("TPM2TOOLS_TCTI", t.tcti())
            .env("TSS2_LOG", "all+none"),
        30 * SEC,
    );
    assert!(
        out.status.success(),
        "tpm2_dictionarylockout: {}",
        text(&out)
    );
    t.stop();
    t.start_again();
    let st = da_state(t.tcti());
    assert_eq!(
        (st.max_tries, st.recovery_time, st.lockout_recovery),
        (7, 9, 11),
        "DA parameters after a restart of an existing state: {st:?}"
    );
    assert!(st.orderly, "restart without a TPM user: {st:?}");
    t.stop();
}

/// The TPM backend's line in `status`.
fn tpm_status(d: &Daemon) -> String {
    status_backend(d, "tpm")["detail"]
        .as_str()
        .expect("detail")
        .to_owned()
}

/// The lockout authorization the test gives the simulator (`tpm2_changeauth -c lockout`).
const LOCKOUT_AUTH: &str = "lockout-pass-7c1";

/// Runs a tpm2-tools command against `tcti`, asserting success.
fn tpm2_tool(tcti: &str, tool: &str, args: &[&str]) {
    let out = run_with_timeout(
        Command::new(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", tcti)
            .env("TSS2_LOG", "all+none"),
        30 * SEC,
    );
    assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
}

/// A TPM driven into dictionary-attack lockout by unclean power cycles after DA-protected keys
/// were used: `status` shows the counter, the maximum and the lockout; `machine-sign` is
/// `backend_unavailable` naming the lockout and when it clears. `custody tpm clear-lockout` is
/// refused to a uid whose role lacks it; the administrator's, with the lockout authorization
/// from a file (read as `tpm2_dictionarylockout -p file:F` reads it), ends the lockout without a
/// daemon restart, and signing works again with the same key. A wrong lockout authorization is
/// `permission_denied` naming the TPM's refusal, and locks the lockout hierarchy itself, which
/// the next attempt reports as `backend_unavailable`.
#[test]
fn unclean_power_cycles_lock_the_tpm_out_and_status_reports_it() {
    let roles = format!(
        "{DEFAULT_ROLES}\n[[roles]]\nname = \"signer\"\nunix_users = [\"nobody\"]\n\
         ops = [\"sign\", \"status\"]\nkeys = [\"machine-sign\"]\n"
    );
    let mut d = DaemonBuilder::new()
        .with_tpm()
        .extra(MACHINE_SIGN)
        .roles(&roles)
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\""])
        .prepare();
    let tcti = d.swtpm().expect("swtpm").tcti().to_owned();
    // Two failures lock it out; nothing heals during the test; then the lockout hierarchy gets
    // an authorization of its own.
    tpm2_tool(
        &tcti,
        "tpm2_dictionarylockout",
        &[
            "--setup-parameters",
            "--max-tries=2",
            "--recovery-time=600",
            "--lockout-recovery-time=600",
        ],
    );
    tpm2_tool(&tcti, "tpm2_changeauth", &["-c", "lockout", LOCKOUT_AUTH]);
    // The file as an administrator writes it for tpm2-tools: with a trailing newline.
    let auth_file = d.dir().join("lockout.auth");
    std::fs::write(&auth_file, format!("{LOCKOUT_AUTH}\n")).unwrap();
    let wrong_file = d.dir().join("wrong.auth");
    std::fs::write(&wrong_file, "not-the-lockout-pass\n").unwrap();
    for f in [&auth_file, &wrong_file] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    d.spawn();
    d.wait_ready(READY_TIMEOUT);
    let pem = save_machine_public_pem(&d);
    sign_and_verify(&d, "before");
    let s = tpm_status(&d);
    assert!(
        s.contains("dictionary attack: 0 of 2 failures, lockout no"),
        "{s}"
    );

    let mut locked = false;
    for cycle in 1..=4 {
        assert_eq!(d.terminate().code(), Some(0));
        // Power off without TPM2_Shutdown: what a power loss does to a real TPM.
        let port = d.swtpm().expect("swtpm").port();
        let off = run_with_timeout(
            Command::new("swtpm_ioctl").args(["--tcp", &format!("127.0.0.1:{}", port + 1), "-s"]),
            30 * SEC,
        );
        assert!(off.status.success(), "swtpm_ioctl -s: {}", text(&off));
        std::thread::sleep(SEC / 2);
        d.swtpm().expect("swtpm").start_again();
        d.restart();
        let s = tpm_status(&d);
        let r = d.cli(&[
            "sign",
            "machine-sign",
            "--in",
            path_str(&pem),
            "--out",
            "/dev/null",
        ]);
        if s.contains("lockout YES") {
            assert!(s.contains("of 2 failures"), "{s}");
            assert_eq!(
                r.status.code(),
                Some(exit_code_of(proto::ErrorCode::BackendUnavailable)),
                "cycle {cycle}: {}",
                text(&r)
            );
            // The error names the lockout, when it clears by itself, and the way out.
            for part in [
                "dictionary-attack lockout",
                "one forgotten every 600 s: it clears by itself within about",
                "custody tpm clear-lockout",
            ] {
                assert!(text(&r).contains(part), "{part:?} in {}", text(&r));
            }
            locked = true;
            break;
        }
        assert!(
            r.status.success(),
            "cycle {cycle}, not locked ({s}): {}",
            text(&r)
        );
    }
    assert!(
        locked,
        "four unclean power cycles did not lock the TPM out: {}",
        tpm_status(&d)
    );

    // A uid whose role does not grant `tpm.clear-lockout` is refused before the TPM is asked.
    let (_, out) = d.cli_as("nobody", "nogroup", &clear_lockout(&auth_file));
    assert_eq!(
        out.status.code(),
        Some(exit_code_of(proto::ErrorCode::PermissionDenied)),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("TPM refused"), "{}", text(&out));
    assert!(tpm_status(&d).contains("lockout YES"));

    // Recovery: the administrator clears the lockout while the daemon serves.
    let r = cli_json(&d, &clear_lockout(&auth_file));
    assert_eq!(r["counter"], 0, "{r}");
    assert_eq!(r["max_tries"], 2, "{r}");
    assert_eq!(r["in_lockout"], false, "{r}");
    assert_eq!(r["lockout_recovery_seconds"], 600, "{r}");
    let s = tpm_status(&d);
    assert!(s.contains("0 of 2 failures, lockout no"), "{s}");
    sign_and_verify(&d, "after-clear");
    let da = da_state(&tcti);
    assert_eq!((da.counter, da.in_lockout), (0, false), "{da:?}");

    // A wrong lockout authorization: refused by the TPM, said so...
    let out = d.cli(&clear_lockout(&wrong_file));
    assert_eq!(
        out.status.code(),
        Some(exit_code_of(proto::ErrorCode::PermissionDenied)),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("the TPM refused the lockout authorization")
            && text(&out).contains("for 600 s"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("not-the-lockout-pass"));
    // ...and the lockout hierarchy is now locked itself, even for the right authorization.
    let out = d.cli(&clear_lockout(&auth_file));
    assert_eq!(
        out.status.code(),
        Some(exit_code_of(proto::ErrorCode::BackendUnavailable)),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("lockout hierarchy is locked"),
        "{}",
        text(&out)
    );
    // Keys are not affected by the lockout hierarchy's own lockout.
    sign_and_verify(&d, "after-wrong-auth");
    // Neither authorization reached a log.
    let places = [
        ("the daemon's log (stderr)", d.stderr().into_bytes()),
        ("the audit log", std::fs::read(d.audit_path()).unwrap()),
        ("the CLI's stderr", d.cli_stderr().into_bytes()),
    ];
    assert_no_secrets(
        &places,
        &[
            (
                "the lockout authorization",
                LOCKOUT_AUTH.as_bytes().to_vec(),
            ),
            ("the wrong authorization", b"not-the-lockout-pass".to_vec()),
        ],
    );
}
