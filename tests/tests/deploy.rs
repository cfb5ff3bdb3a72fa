//! Production deployment: the Debian package (layout, lintian, units that verify and score at or
//! below 2.0 in `systemd-analyze security`), the daemon as the unprivileged `custodyd` user under
//! the unit's restrictions that exist without systemd, and what the daemon refuses at start.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use custody_testkit::*;

/// The line `Name:\tvalue` of /proc/PID/status.
fn proc_status(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn run(cmd: &mut Command) -> std::process::Output {
    run_with_timeout(cmd, Duration::from_secs(600))
}

/// Builds the package from the binaries of this build (`scripts/deb.sh --no-build` with a
/// target directory holding them as `release/`), the way `make deb` packages its release build.
fn build_package(work: &Path) -> (PathBuf, String) {
    let target = work.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    for bin in ["custodyd", "custody"] {
        std::fs::copy(bin_path(bin), target.join("release").join(bin)).unwrap();
    }
    let out = run(Command::new(workspace_file("scripts/deb.sh"))
        .arg("--no-build")
        .env("CARGO_TARGET_DIR", &target));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "scripts/deb.sh failed (cargo-deb and lintian come from `make deps`):\n{text}"
    );
    let deb = PathBuf::from(stdout(&out).lines().last().unwrap().trim());
    assert!(deb.is_file(), "{text}");
    (deb, text)
}

#[test]
fn package_has_the_layout_lints_clean_and_its_units_verify_and_score_ok() {
    let work = tempfile::tempdir().unwrap();
    let (deb, text) = build_package(work.path());
    // lintian ran inside deb.sh with --fail-on error; no error tag in its output either.
    let lintian = text.split("== lintian").nth(1).expect("lintian output");
    assert!(
        !lintian.lines().any(|l| l.starts_with("E: ")),
        "lintian errors:\n{lintian}"
    );

    let listing = stdout(&run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/custodyd",
        "./usr/bin/custody",
        "./usr/lib/systemd/system/custodyd.service",
        "./usr/lib/systemd/system/custodyd.socket",
        "./usr/lib/sysusers.d/custodyd.conf",
        "./usr/lib/tmpfiles.d/custodyd.conf",
        "./etc/custodyd/custodyd.toml",
        "./usr/share/man/man8/custodyd.8.gz",
        "./usr/share/man/man1/custody.1.gz",
        "./usr/share/bash-completion/completions/custody",
        "./usr/share/bash-completion/completions/custodyd",
        "./usr/share/zsh/vendor-completions/_custody",
        "./usr/share/fish/vendor_completions.d/custody.fish",
        "./usr/share/doc/custodyd/copyright",
        "./usr/share/doc/custodyd/examples/network.conf",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{listing}"
        );
    }
    let conffiles = stdout(&run_ok(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    ));
    assert_eq!(conffiles.trim(), "/etc/custodyd/custodyd.toml");
    let postinst = stdout(&run_ok(
        Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"),
    ));
    assert!(
        postinst.contains("systemd-sysusers") && postinst.contains("custodyd.socket"),
        "{postinst}"
    );

    // The installed tree: the units verify against it (with the host's targets and /bin/kill,
    // which a real system has), and the shipped config is valid for the shipped daemon.
    let root = work.path().join("root");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let units = root.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "target") {
            std::fs::copy(&p, units.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/usr/bin/kill", root.join("bin/kill")).unwrap();
    let verify = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .args(["custodyd.socket", "custodyd.service"]));
    assert!(
        verify.status.success() && stderr(&verify).trim().is_empty(),
        "systemd-analyze verify: {}{}",
        stdout(&verify),
        stderr(&verify)
    );
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("custodyd.service"));
    let report = stdout(&security);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for custodyd.service:")
                .nth(1)
        })
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}{}", stderr(&security)));
    eprintln!("systemd-analyze security --offline=yes custodyd.service: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");

    let check = run_ok(
        Command::new(root.join("usr/bin/custodyd"))
            .arg("--config")
            .arg(root.join("etc/custodyd/custodyd.toml"))
            .arg("--check"),
    );
    assert!(stdout(&check).ends_with(": OK\n"), "{}", stdout(&check));
}

#[test]
fn unprivileged_daemon_under_the_units_restrictions_runs_the_core_suite() {
    let mut d = DaemonBuilder::new()
        .with_tpm()
        .with_hsm()
        .extra(MOSIP_KEYS)
        .run_as("custodyd")
        .start();
    let account = d.account().unwrap().clone();
    let pid = d.pid().unwrap();

    // Who it runs as and what it may do: that uid, no new privileges, no capabilities at all,
    // umask 0077, no core dumps (RLIMIT_CORE 0, and not dumpable: the kernel then gives its
    // /proc entries to root), memory locked (LimitMEMLOCK=infinity as in the unit).
    let uid = account.uid.to_string();
    assert_eq!(
        proc_status(pid, "Uid"),
        [uid.as_str(); 4].join("\t"),
        "real, effective, saved and fs uid"
    );
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    for caps in ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(proc_status(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(proc_status(pid, "Umask"), "0077");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let proc_owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    assert_eq!(
        proc_owner, 0,
        "PR_SET_DUMPABLE 0: /proc/{pid} belongs to root, not to uid {uid}"
    );
    let locked: u64 = proc_status(pid, "VmLck")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let log = d.stderr();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    if memlock_unlimited() {
        assert!(
            locked > 0,
            "memory not locked with LimitMEMLOCK=infinity:\n{log}"
        );
        assert!(warnings.is_empty(), "warnings at start:\n{log}");
    } else {
        // This machine cannot give the daemon an unlimited RLIMIT_MEMLOCK (no CAP_SYS_RESOURCE
        // here): the daemon says so once, and runs unlocked.
        assert_eq!(locked, 0);
        assert_eq!(warnings.len(), 1, "{log}");
        assert!(
            warnings[0].contains("memory not locked: RLIMIT_MEMLOCK is"),
            "{log}"
        );
    }

    // sign: the TPM's machine key, verified by openssl.
    let data = write(&d, "packet.zip", &random(4096));
    let sig = file(&d, "packet.sig");
    cli_ok(
        &d,
        &[
            "sign",
            "machine-sign",
            "--in",
            path_str(&data),
            "--out",
            path_str(&sig),
        ],
    );
    let sign_pem = pem(&d, "machine-sign", 1);
    openssl_verify(&sign_pem, &data, &sig, RsaSig::Pkcs1v15).expect("signature verifies");

    // unwrap: a data key openssl wrapped to an HSM key.
    create_pkcs11(&d, "ida-partner", "rsa2048-oaep");
    let data_key = random(32);
    let wrapped = write(
        &d,
        "wrapped.bin",
        &openssl_oaep_encrypt(&pem(&d, "ida-partner", 1), &data_key, "sha256", None),
    );
    let out = cli_ok(&d, &["unwrap", "ida-partner", "--in", path_str(&wrapped)]);
    assert_eq!(out.stdout, data_key);

    // envelope: sealed to the HSM key and opened again.
    let plaintext = random(1000);
    let pt = write(&d, "pt.bin", &plaintext);
    let env1 = file(&d, "v1.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-partner",
            "--in",
            path_str(&pt),
            "--out",
            path_str(&env1),
        ],
    );

    // rotate: version 2 seals, version 1's envelope and wrapped key still open.
    let k = cli_json(&d, &["keys", "rotate", "ida-partner"]);
    assert_eq!(k["current_version"], 2, "{k}");
    let env2 = file(&d, "v2.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-partner",
            "--in",
            path_str(&pt),
            "--out",
            path_str(&env2),
        ],
    );
    assert_eq!(
        read(&env2)[6..38],
        thumb(&d, "ida-partner", 2),
        "sealed to v2"
    );
    for env in [&env1, &env2] {
        let out = cli_ok(
            &d,
            &["envelope", "open", "ida-partner", "--in", path_str(env)],
        );
        assert_eq!(out.stdout, plaintext);
    }
    let out = cli_ok(
        &d,
        &[
            "unwrap",
            "ida-partner",
            "--version",
            "1",
            "--in",
            path_str(&wrapped),
        ],
    );
    assert_eq!(out.stdout, data_key);

    // What it wrote belongs to it and to nobody else (umask 0077).
    for f in ["keys.db", "audit.log", "custodyd.sock"] {
        let m = std::fs::metadata(d.dir().join(f)).unwrap();
        assert_eq!(m.uid(), account.uid, "{f} owner");
    }
    for f in ["keys.db", "audit.log"] {
        let mode = std::fs::metadata(d.dir().join(f)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} mode {mode:o}");
    }
    // A restart as the same user finds everything again.
    d.restart();
    let out = cli_ok(
        &d,
        &["envelope", "open", "ida-partner", "--in", path_str(&env1)],
    );
    assert_eq!(out.stdout, plaintext);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn root_without_allow_root_and_files_others_can_write_are_refused() {
    // Root: refused unless the config says allow_root.
    let d = DaemonBuilder::new()
        .server(&["allow_root = false"])
        .prepare();
    let out = d.run_to_exit(20 * SEC);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("refusing to run as root") && err.contains("allow_root"),
        "{err}"
    );

    // A config file group or others can write.
    let mut d = DaemonBuilder::new().with_hsm().prepare();
    for mode in [0o664, 0o646] {
        std::fs::set_permissions(d.config_path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let out = d.run_to_exit(20 * SEC);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = stderr(&out);
        assert!(
            err.contains("is writable by group or others") && err.contains("custodyd.toml"),
            "{err}"
        );
        // `--check` says the same.
        let out = run_ok_or_fail(d.command().arg("--check"));
        assert!(stderr(&out).contains("is writable by group or others"));
    }
    std::fs::set_permissions(d.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();

    // A PIN file others can write.
    let pin = d.hsm().unwrap().pin_file.clone();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o622)).unwrap();
    let out = d.run_to_exit(20 * SEC);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("pkcs11.pin_file") && err.contains("is writable by group or others"),
        "{err}"
    );
    assert!(
        !err.contains(&d.hsm().unwrap().pin()),
        "the message shows the PIN"
    );
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.spawn();
    d.wait_ready(READY_TIMEOUT);

    // One daemon per registry: a second one on the same config is refused.
    let out = d.run_to_exit(20 * SEC);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("in use by a running custodyd"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.terminate().code(), Some(0));
}

/// Runs a command expected to fail (exit 2 for config errors); its output.
fn run_ok_or_fail(cmd: &mut Command) -> std::process::Output {
    let out = run_with_timeout(cmd, 20 * SEC);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    out
}
