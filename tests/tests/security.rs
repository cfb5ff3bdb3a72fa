//! Issue 11: the findings of the adversarial review, one regression test each (each failed
//! before its fix), against the real daemon, swtpm and SoftHSM.

use std::time::Duration;

use custody_testkit::proto::ErrorCode;
use custody_testkit::*;

/// Root may create and list keys named `tenant-*` only.
const TENANT_ADMIN: &str = r#"[[roles]]
name = "tenant-admin"
unix_users = [0]
ops = ["keys.create", "keys.list", "keys.show", "keys.public"]
keys = ["tenant-*"]
"#;

/// Finding 1: the TPM derives one key per MOSIP template whatever the name, so a second
/// MOSIP-template key of a kind would be the machine's key (K10, the machine encryption key)
/// under a name the key-name globs let a scoped admin use. It is refused, naming no key.
#[test]
fn second_mosip_template_key_is_refused() {
    let mut d = tpm_builder().roles(TENANT_ADMIN).start();
    for kind in ["rsa2048-sign", "rsa2048-oaep"] {
        let msg = cli_err(
            &d,
            &[
                "keys",
                "create",
                "tenant-k10",
                "--kind",
                kind,
                "--backend",
                "tpm",
                "--template",
                "mosip",
            ],
            ErrorCode::AlreadyExists,
        );
        assert!(!msg.contains("machine-"), "{msg}");
        assert!(msg.contains("mosip"), "{msg}");
    }
    // Nothing was recorded; a default-template TPM key under that name is fine.
    cli_err(&d, &["keys", "show", "tenant-k10"], ErrorCode::NotFound);
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "tenant-k10",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "tpm",
        ],
    );
    assert_eq!(d.terminate().code(), Some(0));
}

/// A daemon whose socket every user can reach (the roleless tests connect as `nobody`).
fn open_socket() -> DaemonBuilder {
    DaemonBuilder::new()
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\""])
}

fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

/// Helper process (run as another user by the tests below): opens `SEC_CONNS` connections to
/// `SEC_SOCKET`, sends `hello` on each, prints `holding N`, and keeps them until stdin closes.
#[test]
#[ignore]
fn helper_hold_connections() {
    use std::io::Read;
    let Ok(socket) = std::env::var("SEC_SOCKET") else {
        return;
    };
    let n: usize = std::env::var("SEC_CONNS").unwrap().parse().unwrap();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let mut held = Vec::new();
    for _ in 0..n {
        match RawConn::connect(std::path::Path::new(&socket)) {
            Ok(mut c) => {
                let _ = c.send_hello(proto::PROTOCOL_VERSION);
                held.push(c);
            }
            Err(e) => panic!("connect #{}: {e}", held.len()),
        }
    }
    println!("holding {}", held.len());
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

/// Finding 2: a uid with no role holding 2,000 connections does not stop an authorized client.
/// Before: one global limit of 1,024 connections for everyone, and the 1,025th was `busy`.
#[test]
fn roleless_uid_with_2000_connections_does_not_lock_out_a_role() {
    let mut d = open_socket().start();
    let (uid, gid) = nobody();
    let socket = d.socket().to_string_lossy().into_owned();
    let mut h = HelperAs::spawn(
        "helper_hold_connections",
        uid,
        gid,
        &[("SEC_SOCKET", &socket), ("SEC_CONNS", "2000")],
    );
    assert_eq!(h.line("holding"), "2000");
    // The roleless connections are open (or refused `busy` past the uid's quota): root is served.
    for _ in 0..3 {
        cli_ok(&d, &["ping"]);
    }
    let st: proto::ops::StatusResult = d
        .client()
        .call_untyped(proto::ops::names::STATUS, &proto::ops::StatusArgs {})
        .unwrap();
    assert!(st.connections <= 257, "{}", st.connections);
    h.finish();
    d.assert_running();
    assert_eq!(d.terminate().code(), Some(0));
}

/// Finding 2: a connection of a uid with no role is answered `hello` and one request (refused,
/// audited), then closed; it never waits for more.
#[test]
fn roleless_connection_is_closed_after_one_request() {
    let mut d = open_socket().start();
    let (uid, gid) = nobody();
    let socket = d.socket().to_string_lossy().into_owned();
    let mut h = HelperAs::spawn(
        "helper_roleless_two_requests",
        uid,
        gid,
        &[("SEC_SOCKET", &socket)],
    );
    assert_eq!(h.line("first"), "Some(PermissionDenied)");
    assert_eq!(h.line("second"), "closed");
    h.finish();
    let denied = d
        .audit_lines()
        .into_iter()
        .filter(|l| l["uid"] == uid && l["outcome"] == "permission_denied")
        .count();
    assert_eq!(denied, 1);
    assert_eq!(d.terminate().code(), Some(0));
}

/// Finding 2: empty frames do not keep a connection alive past the idle timeout.
#[test]
fn empty_frames_do_not_reset_the_idle_timer() {
    let mut d = DaemonBuilder::new()
        .server(&["idle_timeout_secs = 2"])
        .start();
    let mut c = d.raw();
    assert!(c.hello().unwrap().result.is_ok());
    let start = std::time::Instant::now();
    let closed = loop {
        if start.elapsed() > Duration::from_secs(8) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(400));
        if c.send_bytes(&[0, 0, 0, 0]).is_err() {
            break true;
        }
        match c.read(Duration::from_secs(3)) {
            Reply::Frame(r) => assert_eq!(err_code(&r), Some(ErrorCode::BadRequest), "{r:?}"),
            Reply::Closed => break true,
            Reply::Timeout => panic!("no answer to an empty frame"),
        }
    };
    assert!(closed, "a connection sending only empty frames stayed open");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(d.terminate().code(), Some(0));
}

/// Finding 2: the bytes all connections buffer in frames still arriving are bounded
/// (`server.max_buffered_bytes`, counted as they arrive), and one uid may hold at most a quarter
/// of it: a frame that does not fit is answered `busy`, while another uid's requests are still
/// read.
#[test]
fn partial_frames_share_one_byte_budget() {
    let mut d = DaemonBuilder::new()
        .dir_mode(0o755)
        .server(&[
            "socket_mode = \"0666\"",
            "max_frame = 65536",
            "max_buffered_bytes = 262144",
            "frame_timeout_secs = 2",
        ])
        .start();
    let mut second = d.raw();
    assert!(second.hello().unwrap().result.is_ok());
    // One stalled 64 KiB frame fills root's quarter (64 KiB) …
    let mut stalled = d.raw();
    assert!(stalled.hello().unwrap().result.is_ok());
    stalled.send_bytes(&65536u32.to_be_bytes()).unwrap();
    stalled.send_bytes(&[0u8; 100]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // … so root's next frame does not fit: busy (the daemon may answer and close as soon as the
    // header is in).
    second.send_bytes(&65536u32.to_be_bytes()).unwrap();
    let _ = second.send_bytes(&[0u8; 100]);
    match second.read(Duration::from_secs(6)) {
        Reply::Frame(r) => assert_eq!(err_code(&r), Some(ErrorCode::Busy), "{r:?}"),
        other => panic!("expected busy, got {other:?}"),
    }
    // Another uid is still read (and refused for its lack of a role, not for the budget).
    let (_, out) = d.cli_as("nobody", "nogroup", &["ping"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission_denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The stalled frame times out and gives its bytes back: a large frame fits again.
    assert!(matches!(
        stalled.read(Duration::from_secs(6)),
        Reply::Closed
    ));
    let mut fourth = d.raw();
    assert!(fourth.hello().unwrap().result.is_ok());
    let big = request_body(7, proto::ops::names::PING, &ping_args(&[7u8; 60_000]));
    fourth.send_frame(&big).unwrap();
    match fourth.read(Duration::from_secs(6)) {
        // Read whole and answered (ping data is limited, the frame was not).
        Reply::Frame(r) => assert_eq!(
            (r.id, err_code(&r)),
            (7, Some(ErrorCode::BadRequest)),
            "{r:?}"
        ),
        other => panic!("expected the request's answer, got {other:?}"),
    }
    assert_eq!(d.terminate().code(), Some(0));
}

/// Finding 2: `max_connections` must fit under the open-file limit (raised to its hard limit at
/// start), or accept would hit EMFILE and the token and registry could not open files.
#[test]
fn max_connections_above_the_fd_limit_is_refused() {
    let d = DaemonBuilder::new()
        .server(&["max_connections = 100000000"])
        .prepare();
    let out = d.run_to_exit(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("server.max_connections") && err.contains("RLIMIT_NOFILE"),
        "{err}"
    );
}

/// Helper process (run as another user): pings on one connection, prints `first CODE`, waits
/// for a line on stdin, pings again on the same connection, prints `second CODE` (`ok` or the
/// error code).
#[test]
#[ignore]
fn helper_ping_twice() {
    let Ok(socket) = std::env::var("SEC_SOCKET") else {
        return;
    };
    let c = BlockingClient::connect(std::path::Path::new(&socket)).unwrap();
    let ping = || -> String {
        match c.call_untyped::<_, proto::ops::PingResult>(proto::ops::names::PING, &ping_args(b"x"))
        {
            Ok(_) => "ok".into(),
            Err(e) => server_code(e).as_str().to_owned(),
        }
    };
    println!("first {}", ping());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    println!("second {}", ping());
}

fn run(cmd: &str, args: &[&str]) {
    let out = run_with_timeout(
        std::process::Command::new(cmd).args(args),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{cmd} {args:?}: {}", stderr(&out));
}

/// Finding 5: group membership is looked up again after a reload: a member removed from the
/// group (`gpasswd -d`) loses the group's role on a connection that stays open, after SIGHUP.
/// Before: the groups were read once per connection.
#[test]
fn removed_group_member_loses_the_role_after_sighup_on_an_open_connection() {
    const USER: &str = "custody-sec-member";
    const GROUP: &str = "custody-sec-pingers";
    let account = ensure_system_user(USER);
    if nix::unistd::Group::from_name(GROUP).unwrap().is_none() {
        let _ = run_with_timeout(
            std::process::Command::new("groupadd").args(["--system", GROUP]),
            Duration::from_secs(30),
        );
    }
    run("gpasswd", &["-a", USER, GROUP]);
    let mut d = open_socket()
        .roles(&format!(
            "[[roles]]\nname = \"pingers\"\nunix_groups = [\"{GROUP}\"]\nops = [\"ping\"]\n"
        ))
        .start();
    let socket = d.socket().to_string_lossy().into_owned();
    let mut h = HelperAs::spawn(
        "helper_ping_twice",
        account.uid,
        account.gid,
        &[("SEC_SOCKET", &socket)],
    );
    assert_eq!(h.line("first"), "ok");
    run("gpasswd", &["-d", USER, GROUP]);
    d.reload();
    wait_for(10 * SEC, "the reload", || {
        d.stderr().contains("policy reloaded").then_some(())
    });
    h.say("again");
    assert_eq!(h.line("second"), "permission_denied");
    h.finish();
    assert_eq!(d.terminate().code(), Some(0));
}

/// Runs a prepared daemon expecting it to refuse to start (exit 2 for configuration, 1 for the
/// socket); its stderr.
fn refused_start(d: &Daemon) -> String {
    let out = d.run_to_exit(Duration::from_secs(30));
    assert!(matches!(out.status.code(), Some(1 | 2)), "{out:?}");
    stderr(&out)
}

/// Finding 7: a PIN file readable by others (or by a group not the daemon's), or reached through
/// a symbolic link, is refused with a clear error. Before: only writability was checked, and the
/// path was followed.
#[test]
fn pin_file_readable_by_others_or_symlinked_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = DaemonBuilder::new().with_hsm().prepare();
    let pin = d.hsm().unwrap().pin_file.clone();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused_start(&d);
    assert!(
        err.contains("readable by others") && err.contains("pkcs11.pin_file"),
        "{err}"
    );
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&pin, None, Some(65534)).unwrap();
    let err = refused_start(&d);
    assert!(err.contains("readable by group 65534"), "{err}");
    std::os::unix::fs::chown(&pin, None, Some(0)).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Through a symlink: refused too.
    let real = pin.with_extension("real");
    std::fs::rename(&pin, &real).unwrap();
    std::os::unix::fs::symlink(&real, &pin).unwrap();
    let err = refused_start(&d);
    assert!(err.contains("symbolic link"), "{err}");
    std::fs::remove_file(&pin).unwrap();
    std::fs::rename(&real, &pin).unwrap();
    let mut d = d;
    d.spawn();
    d.wait_ready(READY_TIMEOUT);
    assert_eq!(d.terminate().code(), Some(0));
}

/// Finding 7: an existing socket directory others can write to is refused (they could replace
/// the socket); a second daemon on the same socket path is refused by the socket's lock.
#[test]
fn socket_directory_writable_by_others_is_refused() {
    let d = DaemonBuilder::new().dir_mode(0o777).prepare();
    let err = refused_start(&d);
    assert!(
        err.contains("socket directory") && err.contains("writable"),
        "{err}"
    );
    let mut d = DaemonBuilder::new().dir_mode(0o1777).start();
    assert_eq!(d.terminate().code(), Some(0));
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Finding 8: `--out` files (an unwrapped data key here) are created 0600, an existing file is
/// narrowed to 0600, and a symbolic link is not followed. Before: 0644 (umask 022) through links.
#[test]
fn cli_outputs_are_private_and_not_written_through_symlinks() {
    let mut d = hsm_daemon();
    create_pkcs11(&d, "ida", "rsa2048-oaep");
    let pem = pem(&d, "ida", 1);
    let dk = random(32);
    let ct = write(
        &d,
        "wrapped",
        &openssl_oaep_encrypt(&pem, &dk, "sha256", None),
    );
    let out = file(&d, "dk.bin");
    // Under the usual umask.
    let umask = |o: &mut std::process::Command| {
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg("umask 022 && exec \"$0\" \"$@\"")
            .arg(o.get_program())
            .args(o.get_args());
        c
    };
    let args = [
        "unwrap",
        "ida",
        "--in",
        path_str(&ct),
        "--out",
        path_str(&out),
    ];
    let o = run_with_timeout(
        &mut umask(&mut d.cli_command(&args)),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(read(&out), dk);
    assert_eq!(mode(&out), 0o600);
    // An existing world-readable file is narrowed.
    let old = write(&d, "old.bin", b"x");
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    cli_ok(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            path_str(&ct),
            "--out",
            path_str(&old),
        ],
    );
    assert_eq!(mode(&old), 0o600);
    // A symlink planted at the output path is refused; its target is untouched.
    let target = write(&d, "target", b"keep");
    let link = file(&d, "link.bin");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    cli_usage_err(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            path_str(&ct),
            "--out",
            path_str(&link),
        ],
    );
    assert_eq!(read(&target), b"keep");
    assert_eq!(d.terminate().code(), Some(0));
}

/// Finding 8: the client bounds a response frame (a fake server announcing a 4 GiB frame is
/// dropped at once, nothing allocated), and `--server-uid` / `CUSTODY_SERVER_UID` refuse a socket
/// served by another uid.
#[test]
fn client_bounds_frames_and_checks_the_server_uid() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut h = [0u8; 4];
        s.read_exact(&mut h).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(h) as usize];
        s.read_exact(&mut body).unwrap();
        s.write_all(&0xffff_fff0u32.to_be_bytes()).unwrap();
        s.write_all(&[0u8; 1024]).unwrap();
        // Keep the connection open: only the client's bound can end the wait.
        std::thread::sleep(Duration::from_secs(20));
    });
    let start = std::time::Instant::now();
    let r = BlockingClient::connect(&sock);
    assert!(r.is_err(), "a 4 GiB frame was accepted");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    drop(server);

    let mut d = DaemonBuilder::new().start();
    cli_ok(&d, &["--server-uid", "0", "ping"]);
    let o = d.cli(&["--server-uid", "4242", "ping"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        stderr(&o).contains("not the expected server uid 4242"),
        "{o:?}"
    );
    let mut c = d.cli_command(&["ping"]);
    c.env("CUSTODY_SERVER_UID", "4242");
    let o = run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(d.terminate().code(), Some(0));
}

/// Root administers everything; `nobody` may rotate, retire and destroy `master` and read
/// `status`, nothing else.
const MASTER_OPERATOR: &str = r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]

[[roles]]
name = "master-operator"
unix_users = ["nobody"]
ops = ["status", "keys.rotate", "keys.retire", "keys.destroy"]
keys = ["master"]
"#;

/// Finding 9: a refused `keys.retire`/`keys.destroy` of a master version names none of the
/// keys it wraps (the caller may not list them), and `status` shows per-op counters and backend
/// details (token label, model, TCTI) only to a role with `status.detail`. Before: the wrapped
/// key's name, and everything to any role allowed `status`.
#[test]
fn refusals_and_status_leak_nothing_to_a_scoped_role() {
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\""])
        .roles(MASTER_OPERATOR)
        .start();
    create_pkcs11(&d, "master", "aes256");
    create_software(&d, "tenant-secret", "x25519", "master");
    let (_, o) = d.cli_as("nobody", "nogroup", &["keys", "rotate", "master"]);
    assert!(o.status.success(), "{o:?}");
    for op in ["retire", "destroy"] {
        let (_, o) = d.cli_as(
            "nobody",
            "nogroup",
            &["keys", op, "master", "--version", "1"],
        );
        assert_eq!(o.status.code(), Some(10), "{o:?}");
        let err = stderr(&o);
        assert!(err.contains("still wraps"), "{err}");
        assert!(!err.contains("tenant-secret"), "{err}");
    }
    let (_, o) = d.cli_as("nobody", "nogroup", &["--json", "status"]);
    assert!(o.status.success(), "{o:?}");
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["ops"], serde_json::json!({}), "{s}");
    let label = d.hsm().unwrap().label.clone();
    for b in s["backends"].as_array().unwrap() {
        assert_eq!(b["detail"], "ok", "{s}");
    }
    let hsm = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "pkcs11")
        .unwrap();
    assert_eq!(hsm["detail"], "ok", "{s}");
    // The admin sees it all.
    let s = status_json(&d);
    assert!(s["ops"]["keys.rotate"]["ok"].as_u64().unwrap() >= 1, "{s}");
    assert!(status_backend(&d, "pkcs11")["detail"]
        .as_str()
        .unwrap()
        .contains(&label));
    assert_eq!(d.terminate().code(), Some(0));
}

/// Finding 4: a default-template TPM key has a random authValue that only the daemon holds (in
/// its registry; wrapped under an HSM master when the key is created with `--master`):
/// `tpm2_sign` on its persistent handle with the empty (or a wrong) auth fails, while the daemon
/// signs with it, also after a restart. Before: the empty authValue, so anyone who could open
/// the TPM could sign with the key, unaudited.
#[test]
fn default_template_tpm_key_is_unusable_without_the_daemons_auth() {
    let mut d = DaemonBuilder::new().with_tpm().with_hsm().start();
    create_pkcs11(&d, "auth-master", "aes256");
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "tpm-signer",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "tpm",
        ],
    );
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "tpm-wrapped",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "tpm",
            "--master",
            "auth-master",
        ],
    );
    let data = write(&d, "data", b"packet");
    let sig = file(&d, "sig");
    let sign = |d: &Daemon| {
        for key in ["tpm-signer", "tpm-wrapped"] {
            cli_ok(
                d,
                &[
                    "sign",
                    key,
                    "--in",
                    path_str(&data),
                    "--out",
                    path_str(&sig),
                ],
            );
        }
    };
    sign(&d);
    // The swtpm serves one client at a time: the daemon lets go of it first.
    assert_eq!(d.terminate().code(), Some(0));
    // The plain key's authValue is in its registry reference; the wrapped one's is not.
    let mut registry = std::fs::read(d.dir().join("keys.db")).unwrap();
    registry.extend(std::fs::read(d.dir().join("keys.db-wal")).unwrap_or_default());
    let text = String::from_utf8_lossy(&registry);
    assert!(text.contains(";auth="), "no authValue recorded");
    let wrapped_refs: Vec<&str> = text.split("persistent:0x81010101:").skip(1).collect();
    assert!(
        !wrapped_refs.is_empty(),
        "the wrapped key's reference is in the registry"
    );
    for rest in wrapped_refs {
        assert_ne!(
            rest.get(16..22),
            Some(";auth="),
            "the wrapped authValue in clear"
        );
    }
    let dir = d.dir().to_path_buf();
    std::fs::write(dir.join("digest"), sha256(b"packet")).unwrap();
    let tpm = d.swtpm().unwrap();
    for handle in ["0x81010100", "0x81010101"] {
        let out = tpm.tool(&dir, &["tpm2_readpublic", "-c", handle]);
        assert!(out.status.success(), "no key at {handle}: {}", stderr(&out));
        for auth in [None, Some("wrong")] {
            let mut args = vec![
                "tpm2_sign",
                "-c",
                handle,
                "-g",
                "sha256",
                "-d",
                "-o",
                "tpm2.sig",
                "digest",
            ];
            if let Some(a) = auth {
                args.extend(["-p", a]);
            }
            let out = tpm.tool(&dir, &args);
            assert!(
                !out.status.success(),
                "tpm2_sign on {handle} with auth {auth:?} signed with the daemon's key: {out:?}"
            );
        }
    }
    d.restart();
    sign(&d);
    assert_eq!(d.terminate().code(), Some(0));
}

/// Helper process (run as a user with no role): `hello`, then two pings on one connection;
/// prints `first CODE` and `second closed` or `second answered CODE`.
#[test]
#[ignore]
fn helper_roleless_two_requests() {
    let Ok(socket) = std::env::var("SEC_SOCKET") else {
        return;
    };
    let mut c = RawConn::connect(std::path::Path::new(&socket)).unwrap();
    assert!(c.hello().unwrap().result.is_ok());
    let reply = |c: &mut RawConn, id: u64| {
        // Writing to a connection the daemon closed already fails (EPIPE): closed as well.
        match c.send(id, proto::ops::names::PING, &ping_args(b"x")) {
            Ok(()) => c.read(Duration::from_secs(10)),
            Err(_) => Reply::Closed,
        }
    };
    match reply(&mut c, 1) {
        Reply::Frame(r) => println!("first {:?}", err_code(&r)),
        other => println!("first {other:?}"),
    }
    match reply(&mut c, 2) {
        Reply::Closed => println!("second closed"),
        Reply::Frame(r) => println!("second answered {:?}", err_code(&r)),
        Reply::Timeout => println!("second timeout"),
    }
}
