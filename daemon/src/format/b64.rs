//! Base64 as MOSIP uses it: it writes base64url without padding and reads base64url or standard
//! base64, padded or not.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// Decoding failed: the text is neither base64url nor standard base64 (padded or not).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64: expected base64url or standard base64 (padding optional)")]
pub struct Base64Error;

/// Encodes as base64url without padding (RFC 4648 §5), MOSIP's wire form.
pub fn encode_b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url or standard base64, with canonical padding or none.
///
/// Input ending in `=` must be canonically padded (a multiple of 4 long); input without `=` must be
/// unpadded. Rejects whitespace, a mix of the two alphabets, partial padding and non-zero trailing
/// bits.
pub fn decode_b64(text: &str) -> Result<Vec<u8>, Base64Error> {
    let result = if text.ends_with('=') {
        URL_SAFE.decode(text).or_else(|_| STANDARD.decode(text))
    } else {
        URL_SAFE_NO_PAD
            .decode(text)
            .or_else(|_| STANDARD_NO_PAD.decode(text))
    };
    result.map_err(|_| Base64Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_is_url_safe_without_padding() {
        assert_eq!(encode_b64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(encode_b64url(b"a"), "YQ");
        assert_eq!(encode_b64url(b""), "");
    }

    #[test]
    fn decode_accepts_all_four_variants() {
        let data = [0xfbu8, 0xff, 0x01, 0x02];
        for text in ["-_8BAg", "-_8BAg==", "+/8BAg", "+/8BAg=="] {
            assert_eq!(decode_b64(text).as_deref(), Ok(&data[..]), "{text}");
        }
        assert_eq!(decode_b64("").as_deref(), Ok(&[][..]));
    }

    #[test]
    fn decode_rejects_bad_input() {
        for text in [
            "-_8BA+==", // mixed alphabets
            "YQ=",      // wrong padding
            "YQ===",    // too much padding
            "YWJj=",    // padding where none is due
            "Y=Q=",     // padding in the middle
            "Y Q",      // whitespace
            "Y",        // impossible length
            "YR",       // non-zero trailing bits
            "YQ==\n",   // trailing newline
            "Y*Q=",     // not base64 at all
        ] {
            assert_eq!(decode_b64(text), Err(Base64Error), "{text:?}");
        }
    }

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0u8..=255).collect();
        assert_eq!(decode_b64(&encode_b64url(&data)).as_deref(), Ok(&data[..]));
    }
}
