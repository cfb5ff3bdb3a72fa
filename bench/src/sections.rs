//! Sections of `BENCHMARKS.md` owned by one harness: the text between a begin and an end marker
//! (HTML comments, invisible when rendered). `make bench` rewrites the file but carries the peer
//! section over; `make bench-peers` replaces only its own section.

/// Start of the section `make bench-peers` writes.
pub const PEERS_BEGIN: &str = "<!-- peers:begin -->";
/// End of that section.
pub const PEERS_END: &str = "<!-- peers:end -->";

/// The section of `text` from `begin` to `end`, markers included, if both are there in order.
pub fn find<'a>(text: &'a str, begin: &str, end: &str) -> Option<&'a str> {
    let b = text.find(begin)?;
    let e = text[b..].find(end)? + b + end.len();
    Some(&text[b..e])
}

/// `text` with its `begin`…`end` section replaced by `section` (which should carry the markers
/// itself), or with `section` appended after a blank line when `text` has none.
pub fn replace(text: &str, begin: &str, end: &str, section: &str) -> String {
    match find(text, begin, end) {
        Some(old) => {
            let at = text.find(old).unwrap_or(0);
            format!("{}{section}{}", &text[..at], &text[at + old.len()..])
        }
        None => {
            let body = text.trim_end();
            if body.is_empty() {
                format!("{section}\n")
            } else {
                format!("{body}\n\n{section}\n")
            }
        }
    }
}

/// `new` (a whole file a harness generated) with the peer section of `old` (the file it
/// replaces) carried over, unchanged.
pub fn keep_peers(old: &str, new: &str) -> String {
    match find(old, PEERS_BEGIN, PEERS_END) {
        Some(s) => replace(new, PEERS_BEGIN, PEERS_END, s),
        None => new.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "<!-- peers:begin -->\none\n<!-- peers:end -->";
    const S2: &str = "<!-- peers:begin -->\ntwo\n<!-- peers:end -->";

    #[test]
    fn a_section_is_appended_then_replaced_in_place() {
        let a = replace("# Benchmarks\n\nrows\n", PEERS_BEGIN, PEERS_END, S1);
        assert_eq!(a, format!("# Benchmarks\n\nrows\n\n{S1}\n"));
        let b = replace(&format!("head\n{S1}\ntail\n"), PEERS_BEGIN, PEERS_END, S2);
        assert_eq!(b, format!("head\n{S2}\ntail\n"));
        assert_eq!(replace("", PEERS_BEGIN, PEERS_END, S1), format!("{S1}\n"));
    }

    #[test]
    fn a_rewrite_keeps_the_peer_section_and_only_it() {
        let old = format!("# Benchmarks\n\nold rows\n\n{S1}\n");
        let kept = keep_peers(&old, "# Benchmarks\n\nnew rows\n");
        assert_eq!(kept, format!("# Benchmarks\n\nnew rows\n\n{S1}\n"));
        assert_eq!(keep_peers("no section", "new"), "new");
        // An end marker before the begin marker is no section.
        assert_eq!(
            find(&format!("{PEERS_END}{PEERS_BEGIN}"), PEERS_BEGIN, PEERS_END),
            None
        );
    }
}
