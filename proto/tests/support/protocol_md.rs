//! Reads the hex examples of PROTOCOL.md §8 ("Annotated example exchange") from the document
//! itself, so tests compare the encoder and the live daemon with what the document says.
//!
//! Shared by `proto/tests/golden_wire.rs` and `tests/tests/wire_golden.rs` (included by path).
//!
//! Each subsection `### 8.N …` holds two fenced blocks: the frame as one hex string, then the
//! same frame annotated, one CBOR head (or a run of string bytes) per line, the bytes first, then
//! at least two spaces, then the comment. Both are parsed, and they must agree byte for byte.
//! Anything that does not parse is a panic, never silently skipped.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One example frame of §8.
#[derive(Clone, Debug)]
pub struct Example {
    /// The subsection heading, without `### `.
    pub heading: String,
    /// The frame: 4-byte header and CBOR body.
    pub frame: Vec<u8>,
}

impl Example {
    /// The CBOR body (the frame without its header).
    pub fn body(&self) -> &[u8] {
        &self.frame[4..]
    }

    /// Bytes written in backticks in the heading, as hex pairs (e.g. `` `00 00 00 00` ``).
    pub fn heading_bytes(&self) -> Vec<u8> {
        let quoted = self
            .heading
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("no `…` in heading {:?}", self.heading));
        hex_pairs(quoted.split(' ')).unwrap_or_else(|e| panic!("heading {:?}: {e}", self.heading))
    }
}

/// PROTOCOL.md at the workspace root (the parent of the crate that runs the test).
pub fn protocol_md() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The examples of §8 of PROTOCOL.md, keyed by subsection number (`"8.1"` …).
pub fn examples() -> BTreeMap<String, Example> {
    parse_section8(&protocol_md())
}

/// Lowercase hex of `b`, for messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_pairs<'a>(tokens: impl Iterator<Item = &'a str>) -> Result<Vec<u8>, String> {
    tokens
        .map(|t| {
            if t.len() == 2 && t.bytes().all(|c| c.is_ascii_hexdigit()) {
                u8::from_str_radix(t, 16).map_err(|e| format!("{t:?}: {e}"))
            } else {
                Err(format!("{t:?} is not a hex byte"))
            }
        })
        .collect()
}

/// Parses §8 of `md`; panics on anything unexpected.
pub fn parse_section8(md: &str) -> BTreeMap<String, Example> {
    let lines: Vec<&str> = md.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("## 8. "))
        .expect("PROTOCOL.md has a `## 8. ` section");
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let section = &lines[start + 1..end];

    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < section.len() {
        let Some(heading) = section[i].strip_prefix("### ") else {
            i += 1;
            continue;
        };
        let number = heading
            .split(' ')
            .next()
            .filter(|n| n.starts_with("8."))
            .unwrap_or_else(|| panic!("unnumbered heading in §8: {heading:?}"))
            .to_owned();
        // The fenced blocks up to the next heading.
        let mut blocks: Vec<Vec<&str>> = Vec::new();
        i += 1;
        while i < section.len() && !section[i].starts_with("### ") {
            if section[i].trim_end() == "```" {
                let mut block = Vec::new();
                i += 1;
                while i < section.len() && section[i].trim_end() != "```" {
                    block.push(section[i]);
                    i += 1;
                }
                assert!(i < section.len(), "§{number}: unterminated code block");
                blocks.push(block);
            }
            i += 1;
        }
        let [compact, annotated] = &blocks[..] else {
            panic!(
                "§{number} should have 2 code blocks (hex, annotated), has {}",
                blocks.len()
            );
        };
        let compact: String = compact.iter().flat_map(|l| l.split_whitespace()).collect();
        // Pairs of hex digits; an odd digit at the end is a last "pair" of one, refused.
        let frame = hex_pairs(
            compact
                .as_bytes()
                .chunks(2)
                .map(|p| std::str::from_utf8(p).unwrap_or("?")),
        )
        .unwrap_or_else(|e| panic!("§{number} hex block: {e}"));
        let mut listed = Vec::new();
        for line in annotated.iter().filter(|l| !l.trim().is_empty()) {
            let text = line.trim_start();
            let bytes = text.split("  ").next().unwrap_or_default();
            let parsed = hex_pairs(bytes.split(' '))
                .unwrap_or_else(|e| panic!("§{number} annotated line {line:?}: {e}"));
            listed.extend(parsed);
        }
        assert_eq!(
            hex(&frame),
            hex(&listed),
            "§{number}: the hex block and the annotated bytes differ"
        );
        assert!(frame.len() > 4, "§{number}: no body");
        let announced = u32::from_be_bytes(frame[..4].try_into().expect("header")) as usize;
        assert_eq!(
            announced,
            frame.len() - 4,
            "§{number}: the header announces {announced} bytes, the body has {}",
            frame.len() - 4
        );
        let previous = out.insert(
            number.clone(),
            Example {
                heading: heading.to_owned(),
                frame,
            },
        );
        assert!(previous.is_none(), "§{number} appears twice");
    }
    out
}
