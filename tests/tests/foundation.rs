//! Foundation: the server itself — ping and status, roles and their reload, the socket, the
//! config file, the audit log, systemd socket activation and readiness. Each test starts its own
//! daemon in its own directory (with a swtpm where a TPM key is used).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custody_testkit::proto::ops::{names, PingArgs, PingResult, StatusArgs, StatusResult};
use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value as Json;

fn ping_ok_count(status: &Json) -> u64 {
    status["ops"]["ping"]["ok"].as_u64().unwrap_or(0)
}

#[test]
fn ping_and_status_library_and_cli() {
    let mut d = DaemonBuilder::new().start();
    let c = d.client();
    assert_eq!(c.inner().server_hello().version, 1);
    let r: PingResult = c
        .call_untyped(names::PING, &ping_args(b"hi there"))
        .unwrap();
    assert_eq!(r.data, b"hi there");
    let s: StatusResult = c.call_untyped(names::STATUS, &StatusArgs {}).unwrap();
    assert!(s.server.starts_with("custodyd "), "{}", s.server);
    assert_eq!(s.protocol, 1);
    assert!(s.connections >= 1);
    assert_eq!(s.ops["ping"].ok, 1);

    // CLI, human output.
    let out = d.cli(&["ping"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).starts_with("pong from custodyd"), "{out:?}");
    let out = d.cli(&["status"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("uptime"), "{out:?}");
    assert!(stdout(&out).contains("op ping"), "{out:?}");

    // CLI, JSON output; counters and uptime increase.
    let out = d.cli(&["--json", "ping"]);
    assert!(out.status.success(), "{out:?}");
    let j: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(j["pong"], Json::Bool(true));
    let s1 = status_json(&d);
    assert!(s1["server"].as_str().unwrap().starts_with("custodyd"));
    let up1 = s1["uptime_secs"].as_u64().expect("uptime_secs");
    let n1 = ping_ok_count(&s1);
    assert_eq!(n1, 3, "1 library ping + 2 CLI pings: {s1}");
    for i in 0..3u8 {
        let _: PingResult = c.call_untyped(names::PING, &ping_args(&[i])).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1100));
    let s2 = status_json(&d);
    assert_eq!(ping_ok_count(&s2), n1 + 3, "{s2}");
    assert!(
        s2["ops"]["status"]["ok"].as_u64().unwrap() > s1["ops"]["status"]["ok"].as_u64().unwrap()
    );
    assert!(s2["uptime_secs"].as_u64().unwrap() > up1, "{s1} {s2}");
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
    // No daemon: the CLI says it cannot reach it (exit 3).
    let out = d.cli(&["ping"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[test]
fn uid_without_role_is_denied_and_audited() {
    let mut d = DaemonBuilder::new()
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\""])
        .start();
    let (pid, out) = d.cli_as("nobody", "nogroup", &["ping"]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(stderr(&out).contains("permission_denied"), "{out:?}");
    let (_, out) = d.cli_as("nobody", "nogroup", &["status"]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    // Root is still allowed.
    let out = d.cli(&["ping"]);
    assert!(out.status.success(), "{out:?}");

    let lines = d.audit_lines();
    let denied: Vec<&Json> = lines
        .iter()
        .filter(|l| l["uid"] == 65534 && l["op"] == "ping")
        .collect();
    assert_eq!(denied.len(), 1, "{lines:?}");
    let l = denied[0];
    assert_eq!(l["outcome"], "permission_denied", "{l}");
    assert_eq!(l["role"], Json::Null, "{l}");
    assert_eq!(l["gid"], 65534, "{l}");
    assert_eq!(l["pid"], pid, "{l}");
    assert!(lines
        .iter()
        .any(|l| l["uid"] == 65534 && l["op"] == "status" && l["outcome"] == "permission_denied"));
    assert!(lines
        .iter()
        .any(|l| l["uid"] == 0 && l["op"] == "ping" && l["outcome"] == "ok"));
    assert_eq!(d.terminate().code(), Some(0));
}

fn root_role(ops: &[&str]) -> String {
    let ops: Vec<String> = ops.iter().map(|o| toml_str(o)).collect();
    format!(
        "[[roles]]\nname = \"scoped\"\nunix_users = [\"root\"]\nops = [{}]\n",
        ops.join(", ")
    )
}

fn status_allowed(d: &Daemon) -> Result<(), ErrorCode> {
    d.client()
        .call_untyped::<_, StatusResult>(names::STATUS, &StatusArgs {})
        .map(|_| ())
        .map_err(server_code)
}

#[test]
fn role_scoping_and_sighup_reload() {
    let mut d = DaemonBuilder::new().roles(&root_role(&["ping"])).start();
    let c = d.client();
    let _: PingResult = c.call_untyped(names::PING, &ping_args(b"a")).unwrap();
    assert_eq!(status_allowed(&d), Err(ErrorCode::PermissionDenied));
    let out = d.cli(&["status"]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");

    // Grant status and reload.
    d.set_roles(&root_role(&["ping", "status"]));
    d.reload();
    wait_for(5 * SEC, "status to be granted after SIGHUP", || {
        status_allowed(&d).ok()
    });
    assert!(d.stderr().contains("policy reloaded"), "{}", d.stderr());
    // Existing connections see the new policy too.
    let _: StatusResult = c.call_untyped(names::STATUS, &StatusArgs {}).unwrap();

    // A broken file is rejected; the previous roles stay.
    d.write_raw_config("[server\nthis is not toml");
    d.reload();
    wait_for(5 * SEC, "the broken reload to be rejected", || {
        (d.stderr().matches("policy reload rejected").count() == 1).then_some(())
    });
    d.assert_running();
    assert_eq!(status_allowed(&d), Ok(()));
    // A file that parses but names an unknown user is rejected as well.
    d.set_roles("[[roles]]\nname = \"x\"\nunix_users = [\"no-such-user-e2e\"]\nops = [\"*\"]\n");
    d.reload();
    wait_for(5 * SEC, "the second bad reload to be rejected", || {
        (d.stderr().matches("policy reload rejected").count() == 2).then_some(())
    });
    assert!(d.stderr().contains("no-such-user-e2e"));
    assert_eq!(status_allowed(&d), Ok(()));
    let _: PingResult = c.call_untyped(names::PING, &ping_args(b"b")).unwrap();

    // Reload replaces the roles whole: revoking status works.
    d.set_roles(&root_role(&["ping"]));
    d.reload();
    wait_for(5 * SEC, "status to be revoked after SIGHUP", || {
        (status_allowed(&d) == Err(ErrorCode::PermissionDenied)).then_some(())
    });
    let _: PingResult = c.call_untyped(names::PING, &ping_args(b"c")).unwrap();
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}

const SIGNER_ROLES: &str = r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]

[[roles]]
name = "signer"
unix_users = ["nobody"]
ops = ["sign", "keys.public"]
keys = ["machine-*"]
"#;

#[test]
fn signer_role_can_sign_but_not_create_or_decrypt() {
    let mut d = tpm_builder()
        .roles(SIGNER_ROLES)
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\""])
        .start();
    let dir = d.dir().to_path_buf();
    let data = dir.join("data");
    std::fs::write(&data, b"signed by nobody").unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let ct = dir.join("ct");
    std::fs::write(&ct, [3u8; 256]).unwrap();
    std::fs::set_permissions(&ct, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    let (_, out) = d.cli_as(
        "nobody",
        "nogroup",
        &[
            "sign",
            "machine-sign",
            "--in",
            path_str(&data),
            "--out",
            "-",
        ],
    );
    assert!(out.status.success(), "nobody signs: {}", stderr(&out));
    assert_eq!(out.stdout.len(), 256);
    std::fs::write(dir.join("sig"), &out.stdout).unwrap();
    let (_, out) = d.cli_as("nobody", "nogroup", &["keys", "public", "machine-sign"]);
    assert!(
        out.status.success(),
        "nobody reads the public key: {}",
        stderr(&out)
    );
    std::fs::write(dir.join("pub.pem"), &out.stdout).unwrap();
    openssl_verify(
        &dir.join("pub.pem"),
        &dir.join("data"),
        &dir.join("sig"),
        RsaSig::Pkcs1v15,
    )
    .expect("openssl verifies the signature");

    for args in [
        vec![
            "keys",
            "create",
            "evil",
            "--backend",
            "tpm",
            "--kind",
            "rsa2048-sign",
        ],
        vec![
            "keys",
            "create",
            "machine-x",
            "--backend",
            "tpm",
            "--kind",
            "rsa2048-sign",
        ],
        vec!["decrypt", "machine-encrypt", "--in", path_str(&ct)],
        vec![
            "sign-jwt",
            "machine-sign",
            "--payload-file",
            path_str(&data),
        ],
    ] {
        let (_, out) = d.cli_as("nobody", "nogroup", &args);
        assert_eq!(out.status.code(), Some(13), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("permission_denied"),
            "{}",
            stderr(&out)
        );
    }
    // Nothing was created.
    let out = cli_ok(&d, &["--json", "keys", "list"]);
    let j: Json = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = j["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["machine-encrypt", "machine-sign"]);

    let audit = d.audit_lines();
    assert!(audit.iter().any(|l| l["uid"] == 65534
        && l["op"] == "sign"
        && l["role"] == "signer"
        && l["outcome"] == "ok"));
    assert!(audit
        .iter()
        .any(|l| l["uid"] == 65534 && l["op"] == "decrypt" && l["outcome"] == "permission_denied"));
    assert_eq!(d.terminate().code(), Some(0));
}

fn mode_of(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn socket_mode_and_directory() {
    let mut d = DaemonBuilder::new().socket_name("run/sub/c.sock").start();
    let meta = std::fs::symlink_metadata(d.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode_of(d.socket()), 0o660);
    assert_eq!(mode_of(&d.dir().join("run/sub")), 0o750);
    assert_eq!(d.terminate().code(), Some(0));

    let mut d = DaemonBuilder::new()
        .dir_mode(0o711)
        .server(&["socket_mode = \"0600\""])
        .start();
    assert_eq!(mode_of(d.socket()), 0o600);
    // An existing directory keeps its mode.
    assert_eq!(mode_of(d.dir()), 0o711);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn stale_socket_replaced_and_live_socket_refused() {
    let mut d = DaemonBuilder::new().start();
    d.kill();
    assert!(
        std::fs::symlink_metadata(d.socket()).is_ok(),
        "a killed daemon leaves its socket"
    );
    assert!(
        RawConn::connect(d.socket()).is_err(),
        "stale socket accepts"
    );
    d.restart();
    let r: PingResult = d
        .client()
        .call_untyped(names::PING, &ping_args(b"1"))
        .unwrap();
    assert_eq!(r.data, b"1");

    // A second daemon (with a registry of its own: one on the same registry is refused by the
    // registry lock first, deploy.rs) on the live socket refuses to start and leaves the first
    // alone.
    let other = d.dir().join("other.toml");
    std::fs::write(&other, d.config_text().replace("keys.db", "other.db")).unwrap();
    let out = run_with_timeout(
        Command::new(custodyd_bin()).arg("--config").arg(&other),
        20 * SEC,
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("another process is listening"),
        "{}",
        stderr(&out)
    );
    d.assert_running();
    let r: PingResult = d
        .client()
        .call_untyped(names::PING, &ping_args(b"2"))
        .unwrap();
    assert_eq!(r.data, b"2");
    assert_eq!(d.terminate().code(), Some(0));
    assert!(!d.socket().exists(), "socket left behind after SIGTERM");
}

#[test]
fn config_errors_name_file_and_key() {
    let d = DaemonBuilder::new().prepare();
    let good = d.config_text();
    let path = d.config_path().display().to_string();

    let cases: Vec<(String, &str)> = vec![
        (
            good.replacen("[server]\n", "[server]\nbogus_knob = 1\n", 1),
            "bogus_knob",
        ),
        (
            good.replacen("[server]\n", "[server]\nsocket_mode = \"0999\"\n", 1),
            "server.socket_mode",
        ),
        (
            good.replacen("[server]\n", "[server]\nsocket_mode = \"rw-rw----\"\n", 1),
            "server.socket_mode",
        ),
        (
            good.replacen("[storage]\n", "[not_storage]\n", 1),
            "storage",
        ),
        (
            good.replacen("[server]\n", "[server]\nmax_in_flight = 0\n", 1),
            "server.max_in_flight",
        ),
    ];
    for (text, key) in cases {
        d.write_raw_config(&text);
        let out = d.run_to_exit(10 * SEC);
        let err = stderr(&out);
        assert!(!out.status.success(), "accepted config with {key}: {out:?}");
        assert!(err.contains(&path), "stderr does not name the file: {err}");
        assert!(err.contains(key), "stderr does not name `{key}`: {err}");
        assert!(!d.socket().exists());
    }
    // `--check` accepts the good file and rejects a bad one.
    d.write_raw_config(&good);
    let mut c = d.command();
    let out = run_with_timeout(c.arg("--check"), 10 * SEC);
    assert!(out.status.success(), "{out:?}");
    d.write_raw_config(&good.replacen("[server]\n", "[server]\nbogus_knob = 1\n", 1));
    let mut c = d.command();
    let out = run_with_timeout(c.arg("--check"), 10 * SEC);
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn audit_has_one_line_per_op() {
    let mut d = DaemonBuilder::new().start();
    let c = d.client();
    let _: PingResult = c.call_untyped(names::PING, &ping_args(b"x")).unwrap();
    let _: StatusResult = c.call_untyped(names::STATUS, &StatusArgs {}).unwrap();
    let e = c
        .call_untyped::<_, PingResult>(names::PING, &ping_args(&[0; 2000]))
        .unwrap_err();
    assert_eq!(server_code(e), ErrorCode::BadRequest);
    let out = d.cli(&["ping"]);
    assert!(out.status.success(), "{out:?}");
    drop(c);

    let lines = d.audit_lines();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let me = std::process::id();
    let expect = [
        ("ping", "ok", Some(me)),
        ("status", "ok", Some(me)),
        ("ping", "bad_request", Some(me)),
        ("ping", "ok", None),
    ];
    for (l, (op, outcome, pid)) in lines.iter().zip(expect) {
        assert_eq!(l["op"], op, "{l}");
        assert_eq!(l["outcome"], outcome, "{l}");
        assert_eq!(l["uid"], 0, "{l}");
        assert_eq!(l["gid"], 0, "{l}");
        assert!(l["pid"].as_u64().is_some(), "{l}");
        if let Some(p) = pid {
            assert_eq!(l["pid"], p, "{l}");
        } else {
            assert_ne!(l["pid"], me, "{l}");
        }
        assert!(l["duration_us"].as_u64().is_some(), "{l}");
        assert!(l["ts_ms"].as_u64().unwrap() > 1_600_000_000_000, "{l}");
        assert_eq!(l["key"], Json::Null, "{l}");
    }
    for l in &lines {
        assert_eq!(l["role"], "admin", "{l}");
    }
    assert_eq!(d.terminate().code(), Some(0));
}

fn recv_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let end = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {timeout:?}; got {seen:?}");
}

#[test]
fn socket_activation_and_sd_notify() {
    let d = DaemonBuilder::new()
        .socket_name("configured.sock")
        .prepare();
    let activated = d.dir().join("activated.sock");
    let notify_path = d.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&activated)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(custodyd_bin())
        .arg("--config")
        .arg(d.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    // The activator listens first and starts custodyd on the first connection.
    let client = {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match BlockingClient::connect(&activated) {
                Ok(c) => break c,
                Err(e) if Instant::now() < end => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("no daemon behind the activated socket: {e}"),
            }
        }
    };
    let r: PingResult = client
        .call_untyped(
            names::PING,
            &PingArgs {
                data: b"activated".to_vec(),
            },
        )
        .expect("ping over the activated socket");
    assert_eq!(r.data, b"activated");
    recv_until(&notify, "READY=1", Duration::from_secs(10));
    assert!(
        !d.socket().exists(),
        "with LISTEN_FDS the configured socket path must not be bound"
    );
    drop(client);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    recv_until(&notify, "STOPPING=1", Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < end, "custodyd did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        activated.exists(),
        "the activated socket belongs to systemd: not removed"
    );
}
