//! Property tests: every wire type round-trips through CBOR exactly as it travels. For every op
//! in proto's `for_each_op!` list (and `hello`), arbitrary arguments go into a request frame
//! body and come back out of `Request::decode` + `Request::args` as the daemon reads them, and
//! arbitrary results go into a response and come back out as the client reads them; arbitrary
//! `WireError`s go through error responses; what comes out equals what went in.
//!
//! Values come from `arbitrary::Arbitrary`, derived (with `PartialEq` where a type lacks it) on
//! every wire type behind custody-proto's `arbitrary` feature, which only this crate enables;
//! proptest supplies and shrinks the bytes they are built from. A new op whose types lack the derive makes this file fail to compile.

use arbitrary::{Arbitrary, Unstructured};
use custody_proto::message::{from_value, to_cbor};
use custody_proto::ops::*;
use custody_proto::{Request, Response, WireError};
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

/// Builds a `T` from `bytes` (arbitrary fills what the bytes do not cover with defaults).
fn make<'a, T: Arbitrary<'a>>(bytes: &'a [u8]) -> T {
    T::arbitrary(&mut Unstructured::new(bytes)).expect("arbitrary value")
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    to_cbor(v).expect("CBOR encoding")
}

/// `O`'s arguments through a request and its result through a response.
fn op_round_trips<O>(id: u64, args_bytes: &[u8], result_bytes: &[u8]) -> Result<(), TestCaseError>
where
    O: Op,
    O::Args: for<'a> Arbitrary<'a> + PartialEq + std::fmt::Debug,
    O::Result: for<'a> Arbitrary<'a> + PartialEq + std::fmt::Debug,
{
    let args: O::Args = make(args_bytes);
    let body = Request::new(id, O::NAME, &args)
        .and_then(|r| r.encode())
        .map_err(|e| TestCaseError::fail(format!("{}: encoding the request: {e}", O::NAME)))?;
    let req = Request::decode(&body)
        .map_err(|(_, e)| TestCaseError::fail(format!("{}: decoding the request: {e}", O::NAME)))?;
    prop_assert_eq!(req.id, id);
    prop_assert_eq!(req.op.as_str(), O::NAME);
    let back: O::Args = req
        .args()
        .map_err(|e| TestCaseError::fail(format!("{}: decoding the arguments: {e}", O::NAME)))?;
    prop_assert_eq!(&back, &args, "{} arguments changed on the way", O::NAME);

    let result: O::Result = make(result_bytes);
    let body = Response::ok(id, &result)
        .encode()
        .map_err(|e| TestCaseError::fail(format!("{}: encoding the response: {e}", O::NAME)))?;
    let resp = Response::decode(&body)
        .map_err(|e| TestCaseError::fail(format!("{}: decoding the response: {e}", O::NAME)))?;
    prop_assert_eq!(resp.id, id);
    let value = resp
        .result
        .map_err(|e| TestCaseError::fail(format!("{}: an ok response read as {e}", O::NAME)))?;
    let back: O::Result = from_value(&value)
        .map_err(|e| TestCaseError::fail(format!("{}: decoding the result: {e}", O::NAME)))?;
    prop_assert_eq!(&back, &result, "{} result changed on the way", O::NAME);
    Ok(())
}

/// A bare value through CBOR bytes (what `to_cbor` writes, `ciborium` reads).
fn value_round_trips<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + for<'a> Arbitrary<'a> + PartialEq + std::fmt::Debug,
{
    let v: T = make(bytes);
    let enc = cbor(&v);
    let back: T = ciborium::from_reader(&enc[..])
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", std::any::type_name::<T>())))?;
    prop_assert_eq!(&back, &v);
    prop_assert_eq!(cbor(&back), enc);
    Ok(())
}

macro_rules! every_op {
    ($( ($ty:ident, $method:ident, $cname:ident, $name:literal, $args:ty, $res:ty,
         |$a:ident| $access:expr); )*) => {
        /// Runs the round trip for every listed op; returns how many ran.
        fn every_op_round_trips(id: u64, a: &[u8], r: &[u8]) -> Result<usize, TestCaseError> {
            let mut n = 0;
            $(
                op_round_trips::<custody_proto::ops::$ty>(id, a, r)?;
                value_round_trips::<$args>(a)?;
                value_round_trips::<$res>(r)?;
                n += 1;
            )*
            Ok(n)
        }
    };
}

custody_proto::for_each_op!(every_op);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_op_s_arguments_and_result_round_trip(
        id in any::<u64>(),
        a in proptest::collection::vec(any::<u8>(), 0..2048),
        r in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let n = every_op_round_trips(id, &a, &r)?;
        // `hello` is answered by the connection, not in the list.
        op_round_trips::<Hello>(id, &a, &r)?;
        prop_assert_eq!(n + 1, custody_proto::ops::names::ALL.len());
    }

    #[test]
    fn error_responses_round_trip(id in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let err: WireError = make(&bytes);
        let body = Response::err(id, err.clone()).encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = Response::decode(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.id, id);
        prop_assert_eq!(back.result, Err(err));
    }
}
