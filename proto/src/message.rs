//! Requests and responses: CBOR maps `{id, op, args}` and `{id, ok}` / `{id, err}`.

use ciborium::Value;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// A request as it travels: `op` names the operation, `args` is a CBOR map of its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Chosen by the client; echoed in the response so pipelined responses can be matched.
    pub id: u64,
    /// Operation name, e.g. `ping`, `keys.create`, `sign`.
    pub op: String,
    /// Arguments; an empty map when the op takes none.
    pub args: Value,
}

/// A response: the request's `id` and either a result or an error.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The `id` of the request this answers (0 when the request could not be read).
    pub id: u64,
    /// The op's result map, or the error.
    pub result: Result<Value, WireError>,
}

#[derive(Serialize)]
struct RawRequest<'a> {
    id: u64,
    op: &'a str,
    args: &'a Value,
}

#[derive(Deserialize)]
struct RawResponse {
    id: u64,
    #[serde(default)]
    ok: Option<Value>,
    #[serde(default)]
    err: Option<WireError>,
}

#[derive(Serialize)]
struct RawResponseRef<'a> {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    err: Option<&'a WireError>,
}

/// Serialises any serde value to CBOR bytes.
pub fn to_cbor<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out)
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("CBOR encoding failed: {e}")))?;
    Ok(out)
}

/// Converts typed arguments or results to a CBOR value.
pub fn to_value<T: Serialize>(v: &T) -> Result<Value, WireError> {
    Value::serialized(v)
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("CBOR encoding failed: {e}")))
}

/// Converts a CBOR value to typed arguments; a mismatch is a `bad_request` naming the problem.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, WireError> {
    v.deserialized()
        .map_err(|e| WireError::new(ErrorCode::BadRequest, format!("invalid arguments: {e}")))
}

impl Request {
    /// Builds a request with typed arguments.
    pub fn new<T: Serialize>(id: u64, op: &str, args: &T) -> Result<Self, WireError> {
        Ok(Request {
            id,
            op: op.to_owned(),
            args: to_value(args)?,
        })
    }

    /// Encodes the request body (without the frame header).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        to_cbor(&RawRequest {
            id: self.id,
            op: &self.op,
            args: &self.args,
        })
    }

    /// Decodes a request body. On failure returns the id if it could be read (else 0) and a
    /// `bad_request` error saying what is wrong. The body must be exactly one CBOR map.
    pub fn decode(body: &[u8]) -> Result<Self, (u64, WireError)> {
        let bad = |id: u64, m: String| (id, WireError::new(ErrorCode::BadRequest, m));
        // Bounded before any value tree is built (see `shape`).
        crate::shape::check(body).map_err(|e| bad(0, format!("request is not valid CBOR: {e}")))?;
        let value: Value = ciborium::from_reader(body)
            .map_err(|e| bad(0, format!("request is not valid CBOR: {e}")))?;
        let Value::Map(entries) = value else {
            return Err(bad(0, "request is not a CBOR map {id, op, args}".into()));
        };
        let (mut id, mut op, mut args) = (None, None, None);
        for (k, v) in entries {
            match k.as_text() {
                Some("id") => id = Some(v),
                Some("op") => op = Some(v),
                Some("args") => args = Some(v),
                _ => {}
            }
        }
        let id = id
            .as_ref()
            .and_then(|v| v.as_integer())
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| bad(0, "request has no unsigned integer `id`".into()))?;
        let op = match op {
            Some(Value::Text(t)) => t,
            Some(_) => return Err(bad(id, "`op` must be a text string".into())),
            None => return Err(bad(id, "request has no text `op`".into())),
        };
        let args = match args {
            None | Some(Value::Null) => Value::Map(Vec::new()),
            Some(v @ Value::Map(_)) => v,
            Some(_) => return Err(bad(id, "`args` must be a CBOR map".into())),
        };
        Ok(Request { id, op, args })
    }

    /// Decodes the arguments into the op's typed struct.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, WireError> {
        from_value(&self.args)
    }
}

impl Response {
    /// A successful response with typed results.
    pub fn ok<T: Serialize>(id: u64, result: &T) -> Self {
        Response {
            id,
            result: to_value(result),
        }
    }

    /// An error response.
    pub fn err(id: u64, err: WireError) -> Self {
        Response {
            id,
            result: Err(err),
        }
    }

    /// Encodes the response body (without the frame header).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let raw = match &self.result {
            Ok(v) => RawResponseRef {
                id: self.id,
                ok: Some(v),
                err: None,
            },
            Err(e) => RawResponseRef {
                id: self.id,
                ok: None,
                err: Some(e),
            },
        };
        to_cbor(&raw)
    }

    /// Decodes a response body.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let raw: RawResponse = ciborium::from_reader(body).map_err(|e| {
            WireError::new(
                ErrorCode::BadRequest,
                format!("response is not valid CBOR: {e}"),
            )
        })?;
        let result = match (raw.ok, raw.err) {
            (_, Some(e)) => Err(e),
            (Some(v), None) => Ok(v),
            (None, None) => Err(WireError::new(
                ErrorCode::Internal,
                "response carries neither `ok` nor `err`",
            )),
        };
        Ok(Response { id: raw.id, result })
    }

    /// Decodes the result into a typed struct, or returns the error.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, WireError> {
        let v = self.result?;
        v.deserialized().map_err(|e| {
            WireError::new(ErrorCode::Internal, format!("unexpected result shape: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{HelloArgs, PingArgs};

    #[test]
    fn request_round_trip() {
        let r = Request::new(
            7,
            "hello",
            &HelloArgs {
                version: 1,
                client: Some("t".into()),
            },
        )
        .unwrap();
        let back = Request::decode(&r.encode().unwrap()).unwrap();
        assert_eq!(back, r);
        let a: HelloArgs = back.args().unwrap();
        assert_eq!(a.version, 1);
    }

    #[test]
    fn missing_args_is_empty_map() {
        let mut body = Vec::new();
        ciborium::into_writer(
            &Value::Map(vec![
                (Value::Text("id".into()), Value::Integer(3.into())),
                (Value::Text("op".into()), Value::Text("ping".into())),
            ]),
            &mut body,
        )
        .unwrap();
        let r = Request::decode(&body).unwrap();
        let _: PingArgs = r.args().unwrap();
    }

    #[test]
    fn bad_requests() {
        let (id, e) = Request::decode(b"\xff\x00garbage").unwrap_err();
        assert_eq!((id, e.code()), (0, Some(ErrorCode::BadRequest)));
        let mut body = Vec::new();
        ciborium::into_writer(
            &Value::Map(vec![(Value::Text("id".into()), Value::Integer(9.into()))]),
            &mut body,
        )
        .unwrap();
        let (id, e) = Request::decode(&body).unwrap_err();
        assert_eq!((id, e.code()), (9, Some(ErrorCode::BadRequest)));
    }

    #[test]
    fn trailing_bytes_and_mistyped_op() {
        let mut body = Request::new(5, "ping", &PingArgs::default())
            .unwrap()
            .encode()
            .unwrap();
        body.push(0);
        assert_eq!(Request::decode(&body).unwrap_err().0, 0);
        let mut body = Vec::new();
        ciborium::into_writer(
            &Value::Map(vec![
                (Value::Text("id".into()), Value::Integer(11.into())),
                (Value::Text("op".into()), Value::Integer(1.into())),
            ]),
            &mut body,
        )
        .unwrap();
        let (id, e) = Request::decode(&body).unwrap_err();
        assert_eq!((id, e.code()), (11, Some(ErrorCode::BadRequest)));
    }

    #[test]
    fn response_round_trip() {
        let ok = Response::ok(1, &crate::ops::PingResult { data: vec![1, 2] });
        assert_eq!(Response::decode(&ok.encode().unwrap()).unwrap(), ok);
        let err = Response::err(2, WireError::new(ErrorCode::NotFound, "no key `x`"));
        let back = Response::decode(&err.encode().unwrap()).unwrap();
        assert_eq!(back, err);
    }
}
