//! A structural pre-check of a CBOR body before it is decoded into a value tree.
//!
//! Decoding into `ciborium::Value` costs about 32 bytes per item, so a 16 MiB frame of one-byte
//! items would need half a gigabyte. This walk reads only item headers, allocates nothing per item,
//! and refuses bodies with too many items, too deep nesting, truncation, or trailing bytes.

/// Most items one request may hold. Every data item counts: the request map, each map key and
/// value, each array element, each tag, each chunk of an indefinite-length string (not the break).
pub const MAX_ITEMS: usize = 65_536;
/// Deepest nesting one request may have, in containers: each array, map, tag and
/// indefinite-length string opens a level, the request map itself being level 1.
pub const MAX_DEPTH: usize = 31;

/// Why a body was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// More than [`MAX_ITEMS`] items.
    #[error("request has more than {MAX_ITEMS} CBOR items")]
    TooManyItems,
    /// Containers nested more than [`MAX_DEPTH`] deep.
    #[error("request nests containers more than {MAX_DEPTH} deep")]
    TooDeep,
    /// The body ends inside an item.
    #[error("CBOR body is truncated")]
    Truncated,
    /// Bytes follow the first complete item.
    #[error("bytes follow the request's CBOR item")]
    Trailing,
    /// A header that is not valid CBOR.
    #[error("invalid CBOR header at byte {0}")]
    Invalid(usize),
}

fn argument(body: &[u8], pos: &mut usize, info: u8) -> Result<Option<u64>, ShapeError> {
    let n = match info {
        0..=23 => return Ok(Some(u64::from(info))),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 => return Ok(None),
        _ => return Err(ShapeError::Invalid(pos.saturating_sub(1))),
    };
    let bytes = body.get(*pos..*pos + n).ok_or(ShapeError::Truncated)?;
    *pos += n;
    Ok(Some(
        bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    ))
}

/// Checks that `body` is exactly one well-formed CBOR item within the limits.
pub fn check(body: &[u8]) -> Result<(), ShapeError> {
    // Each entry: items still expected in an open container (None: indefinite, until a break).
    // The first entry is the body itself (one item), not a container: it is no level.
    let mut stack: Vec<Option<u64>> = vec![Some(1)];
    let mut pos = 0usize;
    let mut items = 0usize;
    loop {
        while stack.last() == Some(&Some(0)) {
            stack.pop();
        }
        let Some(top) = stack.last_mut() else { break };
        let start = pos;
        let b = *body.get(pos).ok_or(ShapeError::Truncated)?;
        pos += 1;
        if b == 0xff {
            if top.is_none() {
                stack.pop();
                continue;
            }
            return Err(ShapeError::Invalid(start));
        }
        if let Some(n) = top {
            *n -= 1;
        }
        items += 1;
        if items > MAX_ITEMS {
            return Err(ShapeError::TooManyItems);
        }
        let (major, info) = (b >> 5, b & 0x1f);
        let arg = argument(body, &mut pos, info)?;
        let remaining = (body.len() - pos) as u64;
        let child = match (major, arg) {
            (0 | 1, Some(_)) | (7, _) => None,
            (2 | 3, Some(len)) => {
                if len > remaining {
                    return Err(ShapeError::Truncated);
                }
                pos += len as usize;
                None
            }
            // Indefinite strings are chunks of definite strings, up to a break.
            (2 | 3, None) | (4 | 5, None) => Some(None),
            // Every item takes at least one byte: a count above what is left is truncation.
            (4, Some(n)) if n <= remaining => Some(Some(n)),
            (5, Some(n)) if n.saturating_mul(2) <= remaining => Some(Some(n * 2)),
            (4 | 5, Some(_)) => return Err(ShapeError::Truncated),
            (6, Some(_)) => Some(Some(1)),
            _ => return Err(ShapeError::Invalid(start)),
        };
        if let Some(c) = child {
            stack.push(c);
            if stack.len() - 1 > MAX_DEPTH {
                return Err(ShapeError::TooDeep);
            }
        }
    }
    if pos != body.len() {
        return Err(ShapeError::Trailing);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciborium::Value;

    fn cbor(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn accepts_ordinary_requests() {
        let v = Value::Map(vec![
            (Value::Text("id".into()), Value::Integer(7.into())),
            (Value::Text("op".into()), Value::Text("sign".into())),
            (
                Value::Text("args".into()),
                Value::Map(vec![
                    (Value::Text("data".into()), Value::Bytes(vec![1; 300])),
                    (Value::Text("f".into()), Value::Float(1.5)),
                    (
                        Value::Text("t".into()),
                        Value::Tag(24, Box::new(Value::Bool(true))),
                    ),
                    (
                        Value::Text("digests".into()),
                        Value::Array(vec![Value::Bytes(vec![0; 32]); 1024]),
                    ),
                ]),
            ),
        ]);
        assert_eq!(check(&cbor(&v)), Ok(()));
        // Indefinite-length array and byte string: [_ h'01' h'02'] as chunks, then break.
        assert_eq!(
            check(&[0x9f, 0x5f, 0x41, 0x01, 0x41, 0x02, 0xff, 0x01, 0xff]),
            Ok(())
        );
    }

    #[test]
    fn tags_floats_simple_values_and_nested_indefinite_items() {
        // tag(tag(tag(1))), half float, false, null, undefined, an indefinite map holding
        // an indefinite text string in chunks and an indefinite array.
        let body = [
            0x83, // array(3)
            0xc1, 0xc1, 0xc1, 0x01, // tags around 1
            0xf9, 0x3c, 0x00, // half float 1.0
            0xbf, // map(_)
            0x7f, 0x61, b'a', 0x61, b'b', 0xff, // "ab" in chunks
            0x9f, 0xf4, 0xf6, 0xf7, 0xff, // [_ false, null, undefined]
            0xff,
        ];
        assert_eq!(check(&body), Ok(()));
        let v: Value = ciborium::from_reader(&body[..]).unwrap();
        assert!(matches!(v, Value::Array(ref a) if a.len() == 3));
        // Exactly at the limits is fine (one more is refused: `counting_rules`).
        let mut deep = Value::Integer(1.into());
        for _ in 0..MAX_DEPTH {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(check(&cbor(&deep)), Ok(()));
        let many = Value::Array(vec![Value::Null; MAX_ITEMS - 1]);
        assert_eq!(check(&cbor(&many)), Ok(()));
        // A break outside an indefinite item is not CBOR.
        assert!(check(&[0x81, 0xff]).is_err());
    }

    /// Nests `inner` in `n` one-element arrays (definite length).
    fn in_arrays(n: usize, inner: &[u8]) -> Vec<u8> {
        let mut b = vec![0x81; n];
        b.extend_from_slice(inner);
        b
    }

    #[test]
    fn counting_rules() {
        // Depth counts containers; scalars and definite strings inside the deepest one are free.
        assert_eq!(check(&in_arrays(MAX_DEPTH, &[0x41, 0x00])), Ok(()));
        assert_eq!(
            check(&in_arrays(MAX_DEPTH, &[0x80])[..]),
            Err(ShapeError::TooDeep)
        );
        // An empty container one level too deep is refused as well.
        assert_eq!(
            check(&in_arrays(MAX_DEPTH - 1, &[0x81, 0xa0])),
            Err(ShapeError::TooDeep)
        );
        // A tag and an indefinite-length string each open a level.
        assert_eq!(check(&in_arrays(MAX_DEPTH - 1, &[0xc1, 0x01])), Ok(()));
        assert_eq!(
            check(&in_arrays(MAX_DEPTH, &[0xc1, 0x01])),
            Err(ShapeError::TooDeep)
        );
        assert_eq!(
            check(&in_arrays(MAX_DEPTH - 1, &[0x5f, 0x41, 0x00, 0xff])),
            Ok(())
        );
        assert_eq!(
            check(&in_arrays(MAX_DEPTH, &[0x5f, 0x41, 0x00, 0xff])),
            Err(ShapeError::TooDeep)
        );
        // Items: the array and its elements; map keys and values each count.
        let at = Value::Array(vec![Value::Null; MAX_ITEMS - 1]);
        assert_eq!(check(&cbor(&at)), Ok(()));
        let over = Value::Array(vec![Value::Null; MAX_ITEMS]);
        assert_eq!(check(&cbor(&over)), Err(ShapeError::TooManyItems));
        let pairs = (MAX_ITEMS - 1) / 2;
        let map = |n: usize| {
            Value::Map(
                (0..n)
                    .map(|i| (Value::Integer(i.into()), Value::Null))
                    .collect(),
            )
        };
        assert_eq!(check(&cbor(&map(pairs))), Ok(()));
        assert_eq!(check(&cbor(&map(pairs + 1))), Err(ShapeError::TooManyItems));
        // Chunks of an indefinite-length string count; its break does not.
        let mut chunks = vec![0x5f];
        chunks.extend(std::iter::repeat_n([0x40u8], MAX_ITEMS - 1).flatten());
        chunks.push(0xff);
        assert_eq!(check(&chunks), Ok(()));
        chunks.insert(1, 0x40);
        assert_eq!(check(&chunks), Err(ShapeError::TooManyItems));
    }

    #[test]
    fn refuses_blowups_and_malformed_bodies() {
        let many = Value::Array(vec![Value::Map(vec![]); MAX_ITEMS + 1]);
        assert_eq!(check(&cbor(&many)), Err(ShapeError::TooManyItems));
        let mut deep = Value::Integer(1.into());
        for _ in 0..MAX_DEPTH + 1 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(check(&cbor(&deep)), Err(ShapeError::TooDeep));
        // Array announcing 2^32 items in a 5-byte body.
        assert_eq!(
            check(&[0x9a, 0xff, 0xff, 0xff, 0xff]),
            Err(ShapeError::Truncated)
        );
        // Byte string longer than the body.
        assert_eq!(
            check(&[0x5a, 0x00, 0x10, 0x00, 0x00, 0x00]),
            Err(ShapeError::Truncated)
        );
        assert_eq!(check(&[0x01, 0x02]), Err(ShapeError::Trailing));
        assert_eq!(check(&[]), Err(ShapeError::Truncated));
        assert_eq!(check(&[0x1c]), Err(ShapeError::Invalid(0)));
        assert_eq!(check(&[0xff]), Err(ShapeError::Invalid(0)));
    }
}
