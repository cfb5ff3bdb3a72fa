//! systemd integration without systemd: `systemd-socket-activate` hands custodyd a listening
//! socket (LISTEN_FDS), and a datagram socket stands in for NOTIFY_SOCKET to receive READY=1 and
//! STOPPING=1.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custody_e2e::proto::ops::{names, PingArgs, PingResult};
use custody_e2e::{custodyd_bin, BlockingClient, DaemonBuilder};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
