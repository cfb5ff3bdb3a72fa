//! Frame codec: 4-byte big-endian length, then the CBOR body.

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Default largest body a peer accepts (16 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Why a frame was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces more than the limit; refused before allocating.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Limit in force.
        max: u32,
    },
    /// A zero-length frame carries no CBOR value.
    #[error("empty frame")]
    Empty,
}

/// Reads the body length from a header and checks it against `max`.
pub fn body_len(header: [u8; HEADER_LEN], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(len as usize)
}

/// Prefixes a body with its header; fails if it exceeds `max`.
pub fn encode(body: &[u8], max: u32) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= max)
        .ok_or(FrameError::TooLarge {
            len: body.len() as u64,
            max,
        })?;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Appends `parts` to `buf`, a buffer of outgoing frames that may hold plaintexts: when `buf`
/// must grow, its bytes move to a new allocation and the old one is wiped, so no copy is left
/// behind in freed memory.
pub fn append_wiping(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    use zeroize::Zeroize;
    let add: usize = parts.iter().map(|p| p.len()).sum();
    if buf.capacity() - buf.len() < add {
        let mut grown = Vec::with_capacity((buf.len() + add).max(2 * buf.capacity()));
        grown.extend_from_slice(buf);
        buf.zeroize();
        *buf = grown;
    }
    for p in parts {
        buf.extend_from_slice(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_wiping_keeps_order_and_grows() {
        let mut buf = Vec::with_capacity(4);
        append_wiping(&mut buf, &[b"ab", b"cd"]);
        let cap = buf.capacity();
        append_wiping(&mut buf, &[b"efgh"]);
        assert_eq!(buf, b"abcdefgh");
        assert!(buf.capacity() >= 8 && buf.capacity() >= cap);
    }

    #[test]
    fn header_round_trip() {
        let f = encode(b"abc", 10).unwrap();
        assert_eq!(f, [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(body_len([0, 0, 0, 3], 10), Ok(3));
    }

    #[test]
    fn limits() {
        assert_eq!(
            body_len([0xff, 0xff, 0xff, 0xff], DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: DEFAULT_MAX_FRAME
            })
        );
        assert_eq!(body_len([0, 0, 0, 0], 10), Err(FrameError::Empty));
        assert!(encode(&[0u8; 11], 10).is_err());
        assert!(encode(b"", 10).is_err());
    }
}
