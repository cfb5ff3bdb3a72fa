//! Direct rates of a raw SoftHSM loop (no custodyd code) on the reference machine (the 2-core
//! shared Debian 12 machine these benchmarks are meant for): a run whose direct rates are more
//! than [`NOISE_LIMIT`] off these was disturbed by other load. `make bench` and
//! `make bench-peers` both flag such runs.

/// RSA-2048 PKCS#1 v1.5 sign, one thread, ops/s.
pub const HSM_SIGN_1: f64 = 1640.0;
/// The same, two threads.
pub const HSM_SIGN_2: f64 = 3130.0;

/// Largest relative distance of a direct rate from the reference before a run counts as noisy.
pub const NOISE_LIMIT: f64 = 0.25;

/// True when a measured direct rate of `pairs` (callers, measured, reference) is more than
/// [`NOISE_LIMIT`] off its reference.
pub fn off_reference(pairs: &[(usize, f64, f64)]) -> bool {
    pairs
        .iter()
        .any(|(_, d, reference)| (d / reference - 1.0).abs() > NOISE_LIMIT)
}

/// `pairs` (callers, measured, reference) in words, e.g. "1 thread(s) 1,550/s vs 1,640/s (-5%)".
pub fn against_reference(pairs: &[(usize, f64, f64)], unit: &str) -> String {
    pairs
        .iter()
        .map(|(n, d, reference)| {
            format!(
                "{n} {unit} {} vs {} ({:+.0}%)",
                rate(*d),
                rate(*reference),
                (d / reference - 1.0) * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rate in operations per second with thousands separated: "12,345/s".
pub fn rate(v: f64) -> String {
    let s = (v.round() as u64).to_string();
    let mut groups: Vec<&str> = s
        .as_bytes()
        .rchunks(3)
        .map(|g| std::str::from_utf8(g).unwrap_or("?"))
        .collect();
    groups.reverse();
    format!("{}/s", groups.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_references_in_words() {
        assert_eq!(rate(1234567.4), "1,234,567/s");
        assert_eq!(rate(12.0), "12/s");
        let pairs = [(1, 1550.0, HSM_SIGN_1)];
        assert_eq!(
            against_reference(&pairs, "thread(s)"),
            "1 thread(s) 1,550/s vs 1,640/s (-5%)"
        );
        assert!(!off_reference(&pairs));
        assert!(off_reference(&[(2, 1000.0, HSM_SIGN_2)]));
    }
}
