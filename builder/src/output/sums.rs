//! `SHA256SUMS`: `sha256sum -c` input for a build's outputs, and reading one back.

use std::collections::BTreeMap;

/// `sha256sum -c` input for `outputs` (name, sha256), sorted by name.
pub fn sha256sums<'a>(outputs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut lines: Vec<_> = outputs.into_iter().collect();
    lines.sort();
    lines.iter().map(|(name, sha)| format!("{sha}  {name}\n")).collect()
}

/// A malformed `SHA256SUMS`.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[error("{origin}:{line}: expected `SHA256  NAME` (64 hex digits, two spaces or \" *\", a file name), found {text:?}")]
#[serde(tag = "kind", rename = "bad_sums")]
pub struct BadSums {
    pub origin: String,
    pub line: usize,
    pub text: String,
}

/// Reads `sha256sum` output (text or binary mode), name → lower-case hash.
pub fn parse_sha256sums(text: &str, origin: &str) -> Result<BTreeMap<String, String>, BadSums> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .filter(|(h, n)| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) && !n.is_empty());
        let (hash, name) = parsed.ok_or_else(|| BadSums { origin: origin.into(), line: i + 1, text: line.into() })?;
        out.insert(name.to_string(), hash.to_ascii_lowercase());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_and_bad_lines_are_named() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let text = sha256sums([("kernel", a.as_str()), ("initrd.img", b.as_str())]);
        assert!(text.starts_with(&format!("{b}  initrd.img\n")), "sorted: {text}");
        let parsed = parse_sha256sums(&text, "SHA256SUMS").unwrap();
        assert_eq!(parsed["initrd.img"], "b".repeat(64));
        assert_eq!(parse_sha256sums(&format!("{a} *kernel\n"), "x").unwrap()["kernel"], a);
        let e = parse_sha256sums("abc  kernel\n", "pub/SHA256SUMS").unwrap_err().to_string();
        assert!(e.starts_with("pub/SHA256SUMS:1:") && e.contains("abc  kernel"), "{e}");
    }
}
