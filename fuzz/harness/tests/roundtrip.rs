//! Property tests: every encoder/decoder pair of a format the daemon speaks round-trips, and
//! every decoder refuses what its encoder cannot produce — frames, requests and responses,
//! MOSIP envelopes, zero-knowledge attributes, share segments and pool exports, base64.

use custody_daemon::format::{b64, envelope, zk};
use custody_proto::{frame, Request, Response, WireError};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_round_trip(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if body.is_empty() {
            // A frame carries one CBOR value: empty bodies are refused both ways.
            prop_assert_eq!(frame::encode(&body, 1 << 20), Err(frame::FrameError::Empty));
            prop_assert_eq!(frame::body_len([0; 4], 1 << 20), Err(frame::FrameError::Empty));
            return Ok(());
        }
        let f = frame::encode(&body, 1 << 20).unwrap();
        let h = [f[0], f[1], f[2], f[3]];
        prop_assert_eq!(frame::body_len(h, 1 << 20).ok(), Some(body.len()));
        prop_assert_eq!(&f[4..], &body[..]);
    }

    #[test]
    fn requests_round_trip(id in any::<u64>(), op in "[a-z.]{1,20}", data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let r = Request::new(id, &op, &custody_proto::ops::PingArgs { data: data.clone() }).unwrap();
        let back = Request::decode(&r.encode().unwrap()).unwrap();
        prop_assert_eq!(back.id, id);
        prop_assert_eq!(&back.op, &op);
        let args: custody_proto::ops::PingArgs = back.args().unwrap();
        prop_assert_eq!(args.data, data);
    }

    #[test]
    fn responses_round_trip(id in any::<u64>(), msg in ".{0,64}", ok in any::<bool>()) {
        let r = if ok {
            Response::ok(id, &custody_proto::ops::PingResult { data: msg.clone().into_bytes() })
        } else {
            Response::err(id, WireError::new(custody_proto::ErrorCode::NotFound, msg.clone()))
        };
        let back = Response::decode(&r.encode().unwrap()).unwrap();
        prop_assert_eq!(back.id, id);
        prop_assert_eq!(back.result.is_ok(), ok);
    }

    #[test]
    fn envelopes_round_trip(plain in proptest::collection::vec(any::<u8>(), 0..2048), thumb in any::<[u8; 32]>()) {
        let mut key = [0u8; 32];
        let env = envelope::seal_with::<envelope::EnvelopeError, _>(&plain, &thumb, |k| {
            key = *k;
            Ok(vec![0xab; 256])
        }).unwrap();
        let p = envelope::parse(&env).unwrap();
        prop_assert_eq!(p.thumbprint, &thumb);
        prop_assert_eq!(p.wrapped_key, &[0xab; 256][..]);
        prop_assert_eq!(&envelope::open_with(&p, &key).unwrap()[..], &plain[..]);
        let mut bad = key;
        bad[0] ^= 1;
        prop_assert!(envelope::open_with(&p, &bad).is_err());
    }

    #[test]
    fn zk_attributes_round_trip(
        key in any::<[u8; 32]>(),
        id in "[0-9A-Za-z-]{1,40}",
        index in 0u32..=zk::MAX_INDEX,
        value in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let d = zk::derive(&key, &id);
        let a = zk::encrypt_attribute(&d, index, &value).unwrap();
        prop_assert_eq!(a.len(), value.len() + zk::OVERHEAD);
        prop_assert_eq!(zk::attribute_index(&a).unwrap(), index);
        prop_assert_eq!(&zk::decrypt_attribute(&d, &a).unwrap()[..], &value[..]);
        let other = zk::derive(&key, &format!("{id}x"));
        prop_assert!(zk::decrypt_attribute(&other, &a).is_err());
        // MOSIP's text form.
        let text = b64::encode_b64url(&a);
        prop_assert_eq!(b64::decode_b64(&text).unwrap(), a);
    }

    #[test]
    fn share_strings_round_trip(segs in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 256)), 1..4)) {
        let text = segs.iter().map(|(t, w)| zk::share_segment(t, w)).collect::<Vec<_>>().join(".");
        let back = zk::parse_share(&text).unwrap();
        prop_assert_eq!(back.len(), segs.len());
        for (b, (t, w)) in back.iter().zip(&segs) {
            prop_assert_eq!(&b.thumbprint, t);
            prop_assert_eq!(&b.wrapped, w);
        }
    }

    #[test]
    fn pool_exports_round_trip(rows in proptest::collection::btree_map(0u32..=zk::MAX_INDEX, any::<[u8; 32]>(), 0..20)) {
        use base64::Engine as _;
        let mut text = String::from("id,key\n");
        for (i, k) in &rows {
            text.push_str(&format!("{i},{}\n", base64::engine::general_purpose::STANDARD.encode(k)));
        }
        let back = zk::parse_export(&text).unwrap();
        prop_assert_eq!(back.len(), rows.len());
        for (b, (i, k)) in back.iter().zip(&rows) {
            prop_assert_eq!(b.index, *i);
            prop_assert_eq!(&b.wrapped, k);
        }
    }

    #[test]
    fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert_eq!(b64::decode_b64(&b64::encode_b64url(&bytes)).unwrap(), bytes);
    }
}
