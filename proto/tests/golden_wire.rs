//! PROTOCOL.md §8 byte for byte: the hex examples are read from the document at test time (never
//! copied here), the client-side encoder must produce the request frames exactly, and the
//! response frames must decode to the documented values and re-encode identically (the server's
//! encoding of a result struct is deterministic: preferred-form CBOR, fields in declaration order).
//!
//! The live daemon is checked against the same bytes in `tests/tests/wire_golden.rs`.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

#[path = "support/protocol_md.rs"]
mod protocol_md;

use custody_proto::ops::{names, HelloArgs, HelloResult, PingArgs, PingResult};
use custody_proto::{frame, ErrorCode, FrameError, Request, Response, WireError};
use custody_proto::{DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use protocol_md::{examples, hex, Example};

/// The server name the daemon reports: `custodyd` and the workspace version (the daemon's
/// `SERVER_NAME` is built the same way from the same workspace version).
const SERVER_NAME: &str = concat!("custodyd ", env!("CARGO_PKG_VERSION"));

fn example(n: &str) -> Example {
    examples()
        .remove(n)
        .unwrap_or_else(|| panic!("PROTOCOL.md §{n} is missing"))
}

fn framed(body: Vec<u8>) -> Vec<u8> {
    frame::encode(&body, DEFAULT_MAX_FRAME).expect("frame")
}

fn assert_bytes(ours: &[u8], doc: &Example, what: &str) {
    assert_eq!(
        hex(ours),
        hex(&doc.frame),
        "{what} differs from PROTOCOL.md §{} (left: encoder, right: document)",
        doc.heading
    );
}

#[test]
fn section8_has_exactly_the_five_examples() {
    let ex = examples();
    let keys: Vec<&str> = ex.keys().map(String::as_str).collect();
    assert_eq!(keys, ["8.1", "8.2", "8.3", "8.4", "8.5"]);
}

#[test]
fn hello_request_is_what_the_client_encoder_writes() {
    let doc = example("8.1");
    let args = HelloArgs {
        version: PROTOCOL_VERSION,
        client: Some("demo".into()),
    };
    let req = Request::new(1, names::HELLO, &args).expect("request");
    assert_bytes(
        &framed(req.encode().expect("encode")),
        &doc,
        "hello request",
    );
    // And the server reads it back as that request.
    let back = Request::decode(doc.body()).expect("decode");
    assert_eq!((back.id, back.op.as_str()), (1, names::HELLO));
    let a: HelloArgs = back.args().expect("args");
    assert_eq!((a.version, a.client.as_deref()), (1, Some("demo")));
}

#[test]
fn hello_result_decodes_to_the_documented_values_and_reencodes() {
    let doc = example("8.2");
    let resp = Response::decode(doc.body()).expect("decode");
    assert_eq!(resp.id, 1);
    let r: HelloResult = resp.into_result().expect("ok");
    assert_eq!(r.version, PROTOCOL_VERSION);
    assert_eq!(
        r.server, SERVER_NAME,
        "§8.2 must show the server name of this workspace version"
    );
    assert_eq!(r.max_frame, DEFAULT_MAX_FRAME, "default max_frame");
    assert_eq!(r.max_in_flight, 64, "default max_in_flight");
    let ours = Response::ok(1, &r).encode().expect("encode");
    assert_bytes(&framed(ours), &doc, "hello result");
}

#[test]
fn ping_request_is_what_the_client_encoder_writes() {
    let doc = example("8.3");
    let req = Request::new(
        2,
        names::PING,
        &PingArgs {
            data: b"hi".to_vec(),
        },
    )
    .expect("request");
    assert_bytes(&framed(req.encode().expect("encode")), &doc, "ping request");
    let back = Request::decode(doc.body()).expect("decode");
    assert_eq!((back.id, back.op.as_str()), (2, names::PING));
    let a: PingArgs = back.args().expect("args");
    assert_eq!(a.data, b"hi");
}

#[test]
fn ping_result_decodes_to_the_documented_values_and_reencodes() {
    let doc = example("8.4");
    let resp = Response::decode(doc.body()).expect("decode");
    assert_eq!(resp.id, 2);
    let r: PingResult = resp.into_result().expect("ok");
    assert_eq!(r.data, b"hi");
    let ours = Response::ok(2, &r).encode().expect("encode");
    assert_bytes(&framed(ours), &doc, "ping result");
}

#[test]
fn id0_error_is_the_empty_frame_answer() {
    let doc = example("8.5");
    // The heading names the frame this answers; the frame codec refuses it as empty.
    let trigger = doc.heading_bytes();
    let header: [u8; 4] = trigger.as_slice().try_into().expect("a 4-byte header");
    let refusal = frame::body_len(header, DEFAULT_MAX_FRAME).expect_err("refused");
    assert_eq!(refusal, FrameError::Empty);
    // The server answers it with id 0 and bad_request carrying the codec's message.
    let resp = Response::decode(doc.body()).expect("decode");
    assert_eq!(resp.id, 0);
    let e = resp.result.clone().expect_err("an error");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
    assert_eq!(e.message, refusal.to_string());
    let ours = Response::err(
        0,
        WireError::new(ErrorCode::BadRequest, refusal.to_string()),
    )
    .encode()
    .expect("encode");
    assert_bytes(&framed(ours), &doc, "id-0 error");
}
