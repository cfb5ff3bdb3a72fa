//! PROTOCOL.md §8 against the live daemon, byte for byte: the request frames of the document are
//! sent verbatim on a raw socket and the daemon's response frames must equal the document's.
//!
//! Nothing is masked. The fields that could vary are pinned instead: the daemon runs with the
//! default limits, as §8 says (`max_frame` 16 MiB, `max_in_flight` 64), and its server name is
//! `custodyd` with the workspace version, which `proto/tests/golden_wire.rs` checks against §8.2
//! (a version bump therefore means regenerating §8).

#[path = "../../proto/tests/support/protocol_md.rs"]
mod protocol_md;

use std::io::Read;
use std::time::Duration;

use custody_testkit::proto::ops::{names, HelloArgs, PingArgs};
use custody_testkit::*;
use protocol_md::{examples, hex};

/// Reads one whole frame (header and body) exactly as the daemon sent it.
fn raw_frame(c: &mut RawConn) -> Vec<u8> {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut frame = vec![0u8; 4];
    c.stream.read_exact(&mut frame).expect("response header");
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    frame.resize(4 + len, 0);
    c.stream.read_exact(&mut frame[4..]).expect("response body");
    frame
}

#[test]
fn section8_exchange_is_what_the_daemon_sends() {
    let ex = examples();
    // The requests are what a client encoder writes (so a changed request byte fails here even
    // where the daemon's answer would not change, e.g. the `client` name).
    let hello = HelloArgs {
        version: 1,
        client: Some("demo".into()),
    };
    let ping = PingArgs {
        data: b"hi".to_vec(),
    };
    for (n, ours) in [
        ("8.1", frame_bytes(&request_body(1, names::HELLO, &hello))),
        ("8.3", frame_bytes(&request_body(2, names::PING, &ping))),
    ] {
        assert_eq!(
            hex(&ours),
            hex(&ex[n].frame),
            "§{n} is not what the encoder writes"
        );
    }
    let mut d = DaemonBuilder::new().start();
    let mut c = d.raw();
    let steps = [
        ("8.1", ex["8.1"].frame.clone(), "8.2"),
        ("8.3", ex["8.3"].frame.clone(), "8.4"),
        // §8.5 answers the frame named in its heading (the empty frame `00 00 00 00`).
        ("8.5 heading", ex["8.5"].heading_bytes(), "8.5"),
    ];
    for (sent, request, answer) in steps {
        c.send_bytes(&request).expect("send");
        let got = raw_frame(&mut c);
        assert_eq!(
            hex(&got),
            hex(&ex[answer].frame),
            "the daemon's answer to §{sent} differs from PROTOCOL.md §{answer} \
             (left: daemon, right: document)"
        );
    }
    // The connection is still usable after the id-0 error, as §8.5/§3.3 say.
    c.send_bytes(&ex["8.3"].frame).expect("send");
    assert_eq!(hex(&raw_frame(&mut c)), hex(&ex["8.4"].frame));
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}
