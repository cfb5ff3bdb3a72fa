//! Claims of PROTOCOL.md that a clean-room client depends on and that are easy to get subtly
//! wrong, checked on the wire against the real daemon: what id answers a refused body and how
//! items and levels are counted (§2, §3.3), what an explicit `null` gets (§5), the order of checks
//! before and after the key lookup (§4), how `status` counts requests it rejects (§5.3), which
//! kinds each backend can create and what a "live" version is (§6).
//!
//! Arguments are written as raw CBOR values, as an outside client would, not through the typed
//! structs.

use std::time::Duration;

use ciborium::Value;
use custody_testkit::proto::ops::names;
use custody_testkit::proto::{ErrorCode, Response};
use custody_testkit::*;

const T: Duration = Duration::from_secs(10);
/// Key generation in SoftHSM or swtpm can take a while in a debug build.
const KEYGEN: Duration = Duration::from_secs(120);

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    )
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encode");
    out
}

/// A connection that has said `hello`.
fn conn(d: &Daemon) -> RawConn {
    let mut c = d.raw();
    assert!(c.hello().expect("hello").result.is_ok());
    c
}

/// Sends `{id, op, args}` and returns the answer, which must carry that id.
fn ask_within(c: &mut RawConn, id: u64, op: &str, args: Value, t: Duration) -> Response {
    c.send(id, op, &args).expect("send");
    let r = c.expect_frame(t);
    assert_eq!(r.id, id, "{op}: {r:?}");
    r
}

fn ask(c: &mut RawConn, id: u64, op: &str, args: Value) -> Response {
    ask_within(c, id, op, args, T)
}

fn code(r: &Response) -> Option<ErrorCode> {
    r.result
        .as_ref()
        .err()
        .map(|e| e.code().unwrap_or_else(|| panic!("unknown code in {e:?}")))
}

fn message(r: &Response) -> String {
    r.result
        .as_ref()
        .err()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

/// `{id, op: "ping", args: {x: <x>}}`: an unknown argument `x` that only adds shape.
fn ping_with(id: u64, x: Vec<u8>) -> Vec<u8> {
    let mut body = vec![0xa3, 0x62, b'i', b'd', 0x18, id as u8];
    body.extend_from_slice(&[0x62, b'o', b'p', 0x64, b'p', b'i', b'n', b'g']);
    body.extend_from_slice(&[0x64, b'a', b'r', b'g', b's', 0xa1, 0x61, b'x']);
    body.extend(x);
    body
}

#[test]
fn refused_bodies_are_answered_with_id_0_and_exact_messages() {
    let mut d = DaemonBuilder::new().start();
    let mut c = conn(&d);
    let id0 = |c: &mut RawConn, body: &[u8], expected: &str| {
        c.send_frame(body).expect("send");
        let r = c.expect_frame(T);
        assert_eq!(
            (r.id, code(&r), message(&r).as_str()),
            (0, Some(ErrorCode::BadRequest), expected),
            "{r:?}"
        );
    };

    // Levels: the request map is 1, `args` 2, so 29 arrays in `args` reach level 31: accepted.
    let arrays = |n: usize| {
        let mut x = vec![0x81; n];
        x.push(0x01);
        x
    };
    c.send_frame(&ping_with(30, arrays(29))).expect("send");
    let r = c.expect_frame(T);
    assert_eq!((r.id, code(&r)), (30, None), "31 levels: {r:?}");
    // One more array is level 32: refused before `id` is read, so with id 0.
    id0(
        &mut c,
        &ping_with(31, arrays(30)),
        "request is not valid CBOR: request nests containers more than 31 deep",
    );
    // A tag opens a level too.
    let mut tagged = arrays(29);
    tagged.insert(29, 0xc1);
    id0(
        &mut c,
        &ping_with(32, tagged),
        "request is not valid CBOR: request nests containers more than 31 deep",
    );

    // Items: map, id key and value, op key and value, "args", its map, "x", the array = 9, plus
    // one per element.
    let nulls = |n: usize| {
        let mut x = vec![0x9a];
        x.extend_from_slice(&(n as u32).to_be_bytes());
        x.extend(std::iter::repeat_n(0xf6, n));
        x
    };
    c.send_frame(&ping_with(33, nulls(65_536 - 9)))
        .expect("send");
    let r = c.expect_frame(T);
    assert_eq!((r.id, code(&r)), (33, None), "65 536 items: {r:?}");
    id0(
        &mut c,
        &ping_with(34, nulls(65_536 - 8)),
        "request is not valid CBOR: request has more than 65536 CBOR items",
    );

    // The other refusals of §3.3, with their exact messages.
    let mut trailing = ping_with(35, vec![0x01]);
    trailing.push(0x00);
    id0(
        &mut c,
        &trailing,
        "request is not valid CBOR: bytes follow the request's CBOR item",
    );
    let mut truncated = ping_with(36, vec![0x01]);
    truncated.pop();
    id0(
        &mut c,
        &truncated,
        "request is not valid CBOR: CBOR body is truncated",
    );
    id0(
        &mut c,
        &[0x1c],
        "request is not valid CBOR: invalid CBOR header at byte 0",
    );
    id0(&mut c, &[0x05], "request is not a CBOR map {id, op, args}");
    id0(
        &mut c,
        &cbor(&map(vec![
            ("id", Value::Integer((-1).into())),
            ("op", text("ping")),
        ])),
        "request has no unsigned integer `id`",
    );
    id0(
        &mut c,
        &cbor(&map(vec![("id", Value::Null), ("op", text("ping"))])),
        "request has no unsigned integer `id`",
    );
    // Every refusal left the connection open.
    let r = ask(&mut c, 37, names::PING, map(vec![("data", bytes(b"ok"))]));
    assert_eq!(code(&r), None, "{r:?}");
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn explicit_null_is_absent_for_optional_fields_except_ping_data() {
    let mut d = DaemonBuilder::new().start();
    let mut c = d.raw();
    // hello's optional `client`: null and undefined are as if absent.
    let r = ask(
        &mut c,
        1,
        names::HELLO,
        map(vec![("version", 1.into()), ("client", Value::Null)]),
    );
    assert_eq!(code(&r), None, "{r:?}");
    let undefined = [
        &[0xa3, 0x62, b'i', b'd', 0x02, 0x62, b'o', b'p', 0x65][..],
        b"hello",
        &[0x64],
        b"args",
        &[0xa2, 0x67],
        b"version",
        &[0x01, 0x66],
        b"client",
        &[0xf7],
    ]
    .concat();
    c.send_frame(&undefined).expect("send");
    let r = c.expect_frame(T);
    assert_eq!((r.id, code(&r)), (2, None), "undefined: {r:?}");

    // `ping.data` has a default but is no optional: null is refused.
    let r = ask(&mut c, 3, names::PING, map(vec![("data", Value::Null)]));
    assert_eq!(code(&r), Some(ErrorCode::BadRequest), "{r:?}");
    // `sign` takes exactly one of `data`/`digest`: a null `data` is no `data`, so this request
    // passes that check and fails on the (absent) key instead.
    let r = ask(
        &mut c,
        4,
        names::SIGN,
        map(vec![
            ("key", text("absent")),
            ("data", Value::Null),
            ("digest", bytes(&[7; 32])),
            ("scheme", Value::Null),
        ]),
    );
    assert_eq!(code(&r), Some(ErrorCode::NotFound), "{r:?}");
    let r = ask(
        &mut c,
        5,
        names::KEYS_PUBLIC,
        map(vec![
            ("name", text("absent")),
            ("version", Value::Null),
            ("format", Value::Null),
        ]),
    );
    assert_eq!(code(&r), Some(ErrorCode::NotFound), "{r:?}");
    // A required field may not be null.
    let r = ask(
        &mut c,
        6,
        names::SIGN,
        map(vec![("key", Value::Null), ("digest", bytes(&[7; 32]))]),
    );
    assert_eq!(code(&r), Some(ErrorCode::BadRequest), "{r:?}");
    // A field repeated in `args` is refused; a key repeated in the request map: the last counts.
    let r = ask(
        &mut c,
        7,
        names::HELLO,
        Value::Map(vec![
            (text("version"), 1.into()),
            (text("version"), 1.into()),
        ]),
    );
    assert_eq!(code(&r), Some(ErrorCode::BadRequest), "{r:?}");
    c.send_frame(&cbor(&Value::Map(vec![
        (text("id"), 8.into()),
        (text("id"), 9.into()),
        (text("op"), text(names::PING)),
    ])))
    .expect("send");
    let r = c.expect_frame(T);
    assert_eq!((r.id, code(&r)), (9, None), "{r:?}");
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn value_checks_before_and_after_the_key_lookup() {
    let mut d = DaemonBuilder::new().start();
    let mut c = conn(&d);
    let short = bytes(&[1; 10]);
    let absent = || text("absent");
    let cases = [
        // Checked after the key: an unknown key wins over a bad length.
        (
            names::DECRYPT,
            map(vec![("key", absent()), ("ciphertext", short.clone())]),
            ErrorCode::NotFound,
        ),
        (
            names::KEYS_PUBLIC,
            map(vec![("name", absent()), ("format", text("nope"))]),
            ErrorCode::NotFound,
        ),
        (
            names::SIGN_JWT,
            map(vec![("key", absent()), ("payload", bytes(b"[]"))]),
            ErrorCode::NotFound,
        ),
        // Checked before the key.
        (
            names::REWRAP,
            map(vec![
                ("key", absent()),
                ("input", short.clone()),
                ("to_public_key", short.clone()),
            ]),
            ErrorCode::BadRequest,
        ),
        (
            names::UNWRAP,
            map(vec![("key", absent()), ("wrapped", short.clone())]),
            ErrorCode::BadRequest,
        ),
        (
            names::ENVELOPE_OPEN,
            map(vec![("key", absent()), ("envelope", short.clone())]),
            ErrorCode::BadRequest,
        ),
        (
            names::SIGN,
            map(vec![("key", absent()), ("digest", short.clone())]),
            ErrorCode::BadRequest,
        ),
        (
            names::SIGN_BATCH,
            map(vec![("key", absent()), ("digests", Value::Array(vec![]))]),
            ErrorCode::BadRequest,
        ),
        (
            names::KEYS_CREATE,
            map(vec![
                ("name", text("bad name")),
                ("kind", text("aes256")),
                ("backend", text("pkcs11")),
            ]),
            ErrorCode::BadRequest,
        ),
    ];
    for (i, (op, args, expected)) in cases.into_iter().enumerate() {
        let r = ask(&mut c, 10 + i as u64, op, args);
        assert_eq!(code(&r), Some(expected), "{op}: {r:?}");
    }
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}

fn ops_counts(c: &mut RawConn, id: u64) -> std::collections::BTreeMap<String, (u64, u64)> {
    let r = ask(c, id, names::STATUS, map(vec![]));
    let s: custody_testkit::proto::ops::StatusResult = r.into_result().expect("status");
    s.ops.into_iter().map(|(k, v)| (k, (v.ok, v.err))).collect()
}

#[test]
fn status_counts_rejected_requests_as_documented() {
    let mut d = DaemonBuilder::new().start();
    let mut observer = conn(&d);
    let before = ops_counts(&mut observer, 1);

    let mut c = d.raw();
    // Before hello: a known op under its name, an unknown one under `unknown`.
    for (id, op) in [(1, names::SIGN), (2, "frobnicate")] {
        let r = ask(&mut c, id, op, map(vec![]));
        assert_eq!(code(&r), Some(ErrorCode::BadRequest), "{r:?}");
        assert!(message(&r).contains("`hello`"), "{r:?}");
    }
    // An empty frame: answered, not counted.
    c.send_bytes(&[0, 0, 0, 0]).expect("send");
    assert_eq!(code(&c.expect_frame(T)), Some(ErrorCode::BadRequest));
    // An unreadable body, before hello: `unknown`.
    c.send_frame(&[0x05]).expect("send");
    assert_eq!(code(&c.expect_frame(T)), Some(ErrorCode::BadRequest));
    assert!(c.hello().expect("hello").result.is_ok());
    // After hello: an unknown op and an unreadable body, both `unknown`.
    let r = ask(&mut c, 3, "frobnicate", map(vec![]));
    assert_eq!(code(&r), Some(ErrorCode::UnknownOp), "{r:?}");
    c.send_frame(&[0x1c]).expect("send");
    assert_eq!(code(&c.expect_frame(T)), Some(ErrorCode::BadRequest));
    // A frame refused as too large: not counted.
    let mut big = d.raw();
    big.send_bytes(&u32::MAX.to_be_bytes()).expect("send");
    assert_eq!(code(&big.expect_frame(T)), Some(ErrorCode::TooLarge));
    big.expect_closed(T);

    let after = ops_counts(&mut observer, 2);
    let delta = |op: &str| {
        let (a, b) = (
            after.get(op).copied().unwrap_or_default(),
            before.get(op).copied().unwrap_or_default(),
        );
        (a.0 - b.0, a.1 - b.1)
    };
    assert_eq!(delta("sign"), (0, 1), "{before:?} → {after:?}");
    assert_eq!(delta("unknown"), (0, 4), "{before:?} → {after:?}");
    assert_eq!(delta("hello"), (1, 0), "{before:?} → {after:?}");
    // The first status request, counted after it answered.
    assert_eq!(delta("status"), (1, 0), "{before:?} → {after:?}");
    let total = |m: &std::collections::BTreeMap<String, (u64, u64)>| {
        m.values().fold((0, 0), |t, c| (t.0 + c.0, t.1 + c.1))
    };
    let (ta, tb) = (total(&after), total(&before));
    assert_eq!(
        (ta.0 - tb.0, ta.1 - tb.1),
        (2, 5),
        "nothing else was counted"
    );
    drop((c, observer));
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn kinds_by_backend_live_versions_and_decrypt_check_order() {
    let mut d = DaemonBuilder::new().with_tpm().with_hsm().start();
    let mut c = conn(&d);
    let mut id = 100u64;
    let mut create =
        |c: &mut RawConn, name: &str, kind: &str, backend: &str, master: Option<&str>| {
            id += 1;
            let mut args = vec![
                ("name", text(name)),
                ("kind", text(kind)),
                ("backend", text(backend)),
            ];
            if let Some(m) = master {
                args.push(("master", text(m)));
            }
            code(&ask_within(c, id, names::KEYS_CREATE, map(args), KEYGEN))
        };

    // §6: which kinds each backend can create.
    assert_eq!(create(&mut c, "t-sign", "rsa2048-sign", "tpm", None), None);
    assert_eq!(
        create(&mut c, "t-aes", "aes256", "tpm", None),
        Some(ErrorCode::WrongKind)
    );
    for kind in ["rsa2048-sign", "rsa2048-oaep", "aes256"] {
        assert_eq!(
            create(&mut c, &format!("p-{kind}"), kind, "pkcs11", None),
            None
        );
    }
    let master = "p-aes256";
    assert_eq!(create(&mut c, "w", "aes256", "wrapped", Some(master)), None);
    for kind in ["rsa2048-sign", "rsa2048-oaep"] {
        assert_eq!(
            create(&mut c, &format!("w-{kind}"), kind, "wrapped", Some(master)),
            Some(ErrorCode::WrongKind),
            "{kind}"
        );
    }
    // A master must be an aes256 key in a hardware backend.
    assert_eq!(
        create(&mut c, "w-bad1", "aes256", "wrapped", Some("w")),
        Some(ErrorCode::WrongKind)
    );
    assert_eq!(
        create(
            &mut c,
            "w-bad2",
            "aes256",
            "wrapped",
            Some("p-rsa2048-oaep")
        ),
        Some(ErrorCode::WrongKind)
    );
    assert_eq!(
        create(&mut c, "w-bad3", "aes256", "wrapped", None),
        Some(ErrorCode::BadRequest)
    );

    // §6 "live": every state but destroyed keeps the master version that wraps it.
    let mut n = 200u64;
    let mut admin = |c: &mut RawConn, op: &str, name: &str, version: Option<u32>| {
        n += 1;
        let mut args = vec![("name", text(name))];
        if let Some(v) = version {
            args.push(("version", v.into()));
        }
        let r = ask_within(c, n, op, map(args), KEYGEN);
        (code(&r), message(&r))
    };
    assert_eq!(admin(&mut c, names::KEYS_ROTATE, master, None).0, None);
    let blocked = |r: (Option<ErrorCode>, String)| {
        assert_eq!(r.0, Some(ErrorCode::BadRequest), "{}", r.1);
        // Names no key (the caller may not see it), only how many versions.
        assert!(r.1.contains("still wraps 1 live software key"), "{}", r.1);
        assert!(!r.1.contains("`w`"), "{}", r.1);
    };
    // w v1 is active.
    blocked(admin(&mut c, names::KEYS_RETIRE, master, Some(1)));
    // w v1 is decrypt-only.
    assert_eq!(admin(&mut c, names::KEYS_ROTATE, "w", None).0, None);
    blocked(admin(&mut c, names::KEYS_RETIRE, master, Some(1)));
    blocked(admin(&mut c, names::KEYS_DESTROY, master, Some(1)));
    // w v1 is retired: still live.
    assert_eq!(admin(&mut c, names::KEYS_RETIRE, "w", Some(1)).0, None);
    blocked(admin(&mut c, names::KEYS_RETIRE, master, Some(1)));
    // w v1 destroyed: master v1 is free (w v2 is wrapped under master v2).
    assert_eq!(admin(&mut c, names::KEYS_DESTROY, "w", Some(1)).0, None);
    assert_eq!(admin(&mut c, names::KEYS_RETIRE, master, Some(1)).0, None);
    assert_eq!(admin(&mut c, names::KEYS_DESTROY, master, Some(1)).0, None);

    // §4/§5.14: decrypt checks the key, version and kind before the ciphertext length.
    let short = bytes(&[1; 10]);
    let decrypt = |c: &mut RawConn, id: u64, key: &str, version: Option<u32>| {
        let mut args = vec![("key", text(key)), ("ciphertext", short.clone())];
        if let Some(v) = version {
            args.push(("version", v.into()));
        }
        code(&ask(c, id, names::DECRYPT, map(args)))
    };
    let oaep = "p-rsa2048-oaep";
    assert_eq!(
        decrypt(&mut c, 301, "p-rsa2048-sign", None),
        Some(ErrorCode::WrongKind)
    );
    assert_eq!(
        decrypt(&mut c, 302, oaep, None),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        decrypt(&mut c, 303, oaep, Some(9)),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(admin(&mut c, names::KEYS_ROTATE, oaep, None).0, None);
    assert_eq!(admin(&mut c, names::KEYS_RETIRE, oaep, Some(1)).0, None);
    assert_eq!(
        decrypt(&mut c, 304, oaep, Some(1)),
        Some(ErrorCode::KeyRetired)
    );
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}
