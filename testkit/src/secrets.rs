//! Searching what the daemon and the CLI wrote for secrets the test knows, in every form a log
//! line could carry them: raw bytes, hex (lower and upper case), and base64 (standard and
//! URL-safe alphabets, at each of the three alignments a secret can have inside a longer
//! base64 text).

use base64::Engine;

/// The byte strings that betray `secret` in a text: the raw bytes, lower and upper hex, and for
/// each base64 alphabet and each offset of the secret modulo 3 inside a longer encoded buffer,
/// the run of base64 characters that depends only on the secret's bytes.
pub fn secret_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    assert!(
        secret.len() >= 8,
        "a secret shorter than 8 bytes is not distinctive enough to search for"
    );
    let mut forms = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ];
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        for shift in 0..3usize {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(secret);
            let text = engine.encode(&buf);
            // Characters covering any prefix byte depend on it; the last group may depend on
            // what follows the secret.
            let start = (shift * 8).div_ceil(6);
            let end = ((shift + secret.len()) * 8 / 6).saturating_sub(1);
            if end > start {
                forms.push(text.as_bytes()[start..end].to_vec());
            }
        }
    }
    forms
}

/// Panics, naming the secret, the form and the place, if any form ([`secret_forms`]) of any of
/// `secrets` occurs in any of `places` (name, content).
pub fn assert_no_secrets(places: &[(&str, Vec<u8>)], secrets: &[(&str, Vec<u8>)]) {
    for (sname, secret) in secrets {
        for form in secret_forms(secret) {
            for (pname, text) in places {
                if let Some(at) = text.windows(form.len()).position(|w| w == form.as_slice()) {
                    let from = at.saturating_sub(80);
                    let to = (at + form.len() + 80).min(text.len());
                    panic!(
                        "{sname} appears in {pname} as {:?}: …{}…",
                        String::from_utf8_lossy(&form),
                        String::from_utf8_lossy(&text[from..to])
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_found_at_every_alignment() {
        let secret = b"\x01\x02secret-bytes\xfe\xff";
        for prefix in 0..3usize {
            let mut buf = vec![b'x'; prefix];
            buf.extend_from_slice(secret);
            buf.extend_from_slice(b"tail");
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf);
            let places = [("log", format!("line {encoded} end").into_bytes())];
            let r =
                std::panic::catch_unwind(|| assert_no_secrets(&places, &[("s", secret.to_vec())]));
            assert!(r.is_err(), "base64 at offset {prefix} not found");
        }
        let places = [(
            "log",
            format!("x {} y", hex::encode_upper(secret)).into_bytes(),
        )];
        assert!(
            std::panic::catch_unwind(|| assert_no_secrets(&places, &[("s", secret.to_vec())]))
                .is_err()
        );
        assert_no_secrets(
            &[("log", b"nothing here".to_vec())],
            &[("s", secret.to_vec())],
        );
    }
}
