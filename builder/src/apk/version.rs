//! Alpine package versions: validation and ordering exactly as apk-tools orders them.
//!
//! Grammar: `digit{.digit}...{letter}{_suffix{digit}}...{~hash}{-rN}`. Ordering walks
//! both strings token by token; the first differing token decides. Digits after the first
//! compare as strings when either has a leading zero (Gentoo rule), else numerically.
//! When one version runs out first, the longer one is newer unless its next token is a
//! pre-release suffix (`_alpha _beta _pre _rc`), which makes it older.

use std::cmp::Ordering;
use std::fmt;

/// A version string that passed validation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(String);

/// The version `{0}` is not a valid Alpine version (expected e.g. `1.2.3_rc1-r0`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {0:?}: expected an Alpine version like 1.2.3b_rc1-r4")]
pub struct InvalidVersion(pub String);

impl Version {
    pub fn parse(s: &str) -> Result<Self, InvalidVersion> {
        if is_valid(s) {
            Ok(Version(s.to_string()))
        } else {
            Err(InvalidVersion(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Full apk ordering (not string ordering; `Ord` on `Version` is the string order
    /// so that it can be used as a stable map key).
    pub fn compare(&self, other: &Version) -> Ordering {
        compare(&self.0, &other.0)
    }

    /// `~` matching: `self` equals `prefix` token-wise up to the end of `prefix`.
    pub fn fuzzy_matches(&self, prefix: &Version) -> bool {
        compare_tokens(&self.0, &prefix.0, true) == Ordering::Equal
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Suffix ranks; `None` (no suffix) sits between pre- and post-release suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Suffix {
    Alpha,
    Beta,
    Pre,
    Rc,
    None,
    Cvs,
    Svn,
    Git,
    Hg,
    P,
}

impl Suffix {
    fn from_name(s: &str) -> Option<Suffix> {
        Some(match s {
            "alpha" => Suffix::Alpha,
            "beta" => Suffix::Beta,
            "pre" => Suffix::Pre,
            "rc" => Suffix::Rc,
            "cvs" => Suffix::Cvs,
            "svn" => Suffix::Svn,
            "git" => Suffix::Git,
            "hg" => Suffix::Hg,
            "p" => Suffix::P,
            _ => return None,
        })
    }
}

/// Token kinds in the order they may appear; a token may only follow one of lower or
/// equal rank (with the exceptions encoded in `Tokens::next`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    InitialDigit,
    Digit,
    Letter,
    Suffix,
    SuffixNo,
    CommitHash,
    RevisionNo,
    End,
    Invalid,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    suffix: Suffix,
}

struct Tokens<'a> {
    rest: &'a str,
    current: Token<'a>,
}

impl<'a> Tokens<'a> {
    fn new(s: &'a str) -> Self {
        let mut t = Tokens { rest: s, current: Token { kind: Kind::InitialDigit, text: "", suffix: Suffix::None } };
        t.take_digits(Kind::InitialDigit);
        t
    }

    fn take_span(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let n = self.rest.bytes().take_while(|&b| pred(b)).count();
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        head
    }

    fn take_digits(&mut self, kind: Kind) {
        let text = self.take_span(|b| b.is_ascii_digit());
        self.current = Token { kind: if text.is_empty() { Kind::Invalid } else { kind }, text, suffix: Suffix::None };
    }

    fn invalid(&mut self) {
        self.current.kind = Kind::Invalid;
    }

    fn advance(&mut self) {
        let prev = self.current.kind;
        let Some(&first) = self.rest.as_bytes().first() else {
            self.current.kind = Kind::End;
            return;
        };
        match first {
            b'a'..=b'z' => {
                if prev > Kind::Digit {
                    return self.invalid();
                }
                let (letter, tail) = self.rest.split_at(1);
                self.rest = tail;
                self.current = Token { kind: Kind::Letter, text: letter, suffix: Suffix::None };
            }
            b'.' | b'0'..=b'9' => {
                if first == b'.' {
                    if prev > Kind::Digit {
                        return self.invalid();
                    }
                    self.rest = &self.rest[1..];
                }
                // A digit may follow a letter (`0.99f7`, seen in Alpine's own indexes).
                let kind = match prev {
                    Kind::InitialDigit | Kind::Digit => Kind::Digit,
                    Kind::Letter if first != b'.' => Kind::Digit,
                    Kind::Suffix => Kind::SuffixNo,
                    _ => return self.invalid(),
                };
                self.take_digits(kind);
            }
            b'_' => {
                if prev > Kind::SuffixNo {
                    return self.invalid();
                }
                self.rest = &self.rest[1..];
                let name = self.take_span(|b| b.is_ascii_lowercase());
                match Suffix::from_name(name) {
                    Some(suffix) => self.current = Token { kind: Kind::Suffix, text: name, suffix },
                    None => self.invalid(),
                }
            }
            b'~' => {
                if prev >= Kind::CommitHash {
                    return self.invalid();
                }
                self.rest = &self.rest[1..];
                let hash = self.take_span(|b| b.is_ascii_hexdigit());
                if hash.is_empty() {
                    return self.invalid();
                }
                self.current = Token { kind: Kind::CommitHash, text: hash, suffix: Suffix::None };
            }
            b'-' => {
                if prev >= Kind::RevisionNo || !self.rest.starts_with("-r") {
                    return self.invalid();
                }
                self.rest = &self.rest[2..];
                self.take_digits(Kind::RevisionNo);
            }
            _ => self.invalid(),
        }
    }
}

/// Compares two digit strings as unbounded non-negative integers.
fn compare_numbers(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn compare_token(a: &Token, b: &Token) -> Ordering {
    match a.kind {
        Kind::Digit if a.text.starts_with('0') || b.text.starts_with('0') => a.text.as_bytes().cmp(b.text.as_bytes()),
        Kind::Digit | Kind::InitialDigit | Kind::SuffixNo | Kind::RevisionNo => compare_numbers(a.text, b.text),
        Kind::Letter => a.text.cmp(b.text),
        Kind::Suffix => a.suffix.cmp(&b.suffix),
        _ => a.text.as_bytes().cmp(b.text.as_bytes()),
    }
}

fn compare_tokens(a: &str, b: &str, fuzzy: bool) -> Ordering {
    let mut ta = Tokens::new(a);
    let mut tb = Tokens::new(b);
    while ta.current.kind == tb.current.kind && ta.current.kind < Kind::End {
        let ord = compare_token(&ta.current, &tb.current);
        if ord != Ordering::Equal {
            return ord;
        }
        ta.advance();
        tb.advance();
    }
    let (ka, kb) = (ta.current.kind, tb.current.kind);
    if ka == kb || (fuzzy && kb == Kind::End) {
        return Ordering::Equal;
    }
    if ka == Kind::Suffix && ta.current.suffix < Suffix::None {
        return Ordering::Less;
    }
    if kb == Kind::Suffix && tb.current.suffix < Suffix::None {
        return Ordering::Greater;
    }
    // The version that goes on with a "later" token kind ran out of its earlier parts
    // first: e.g. `1.0-r1` vs `1.0.1` — the revision comes after the digit, so it is older.
    kb.cmp(&ka)
}

/// Whether `s` is a valid Alpine version.
pub fn is_valid(s: &str) -> bool {
    let mut t = Tokens::new(s);
    while t.current.kind < Kind::End {
        t.advance();
    }
    t.current.kind == Kind::End
}

/// apk ordering of two version strings (valid or not, as apk does).
pub fn compare(a: &str, b: &str) -> Ordering {
    compare_tokens(a, b, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    /// (a, b, expected ordering of a relative to b)
    const ORDER: &[(&str, &str, Ordering)] = &[
        ("1", "1", Equal),
        ("1", "2", Less),
        ("2", "1", Greater),
        ("1.0", "1.0", Equal),
        ("1.0", "1.1", Less),
        ("1.10", "1.9", Greater),
        ("1.9", "1.10", Less),
        ("1.0", "1", Greater),
        ("1", "1.0", Less),
        ("1.0.0", "1.0", Greater),
        ("2.0", "1.99.99", Greater),
        ("10", "9", Greater),
        ("100", "99", Greater),
        ("1.2.3", "1.2.3", Equal),
        ("1.2.3", "1.2.4", Less),
        ("1.2.10", "1.2.9", Greater),
        ("0.1", "0.01", Greater),
        ("1.01", "1.1", Less),
        ("1.01", "1.001", Greater),
        ("1.001", "1.01", Less),
        ("1.010", "1.01", Greater),
        ("1.05", "1.5", Less),
        ("1.0001", "1.0001", Equal),
        ("1.09", "1.1", Less),
        ("1.10", "1.010", Greater),
        ("01", "1", Equal),
        ("001", "2", Less),
        ("1a", "1", Greater),
        ("1", "1a", Less),
        ("1a", "1b", Less),
        ("1z", "1a", Greater),
        ("1.2a", "1.2", Greater),
        ("1.2a", "1.2b", Less),
        ("1.2a", "1.3", Less),
        ("1.2z", "1.2.1", Less),
        ("1.2.1", "1.2z", Greater),
        ("1.0_alpha", "1.0", Less),
        ("1.0_beta", "1.0", Less),
        ("1.0_pre", "1.0", Less),
        ("1.0_rc", "1.0", Less),
        ("1.0_cvs", "1.0", Greater),
        ("1.0_svn", "1.0", Greater),
        ("1.0_git", "1.0", Greater),
        ("1.0_hg", "1.0", Greater),
        ("1.0_p", "1.0", Greater),
        ("1.0_alpha", "1.0_beta", Less),
        ("1.0_beta", "1.0_pre", Less),
        ("1.0_pre", "1.0_rc", Less),
        ("1.0_rc", "1.0_cvs", Less),
        ("1.0_cvs", "1.0_svn", Less),
        ("1.0_svn", "1.0_git", Less),
        ("1.0_git", "1.0_hg", Less),
        ("1.0_hg", "1.0_p", Less),
        ("1.0_p", "1.0_alpha", Greater),
        ("1.0_rc1", "1.0_rc2", Less),
        ("1.0_rc10", "1.0_rc9", Greater),
        ("1.0_rc", "1.0_rc1", Less),
        ("1.0_rc1", "1.0_rc", Greater),
        ("1.0_rc1", "1.0", Less),
        ("1.0_p1", "1.0", Greater),
        ("1.0_p1", "1.0_p2", Less),
        ("1.0_p10", "1.0_p2", Greater),
        ("1.0_alpha1_beta2", "1.0_alpha1", Less),
        ("1.0_alpha1_p2", "1.0_alpha1", Greater),
        ("1.0_alpha1_beta2", "1.0_alpha2", Less),
        ("1.0_rc1_p1", "1.0_rc1", Greater),
        ("1.0_rc1_p1", "1.0_rc2", Less),
        ("1.0_git20240101", "1.0_git20231231", Greater),
        ("0_git20240101", "0_git20231231", Greater),
        ("1.0-r0", "1.0-r1", Less),
        ("1.0-r1", "1.0-r0", Greater),
        ("1.0-r10", "1.0-r9", Greater),
        ("1.0-r0", "1.0", Greater),
        ("1.0", "1.0-r0", Less),
        ("1.0-r1", "1.0.1", Less),
        ("1.0.1", "1.0-r1", Greater),
        ("1.0-r5", "1.0a", Less),
        ("1.0-r5", "1.0_p1", Less),
        ("1.0-r5", "1.0_rc1", Greater),
        ("1.0_rc1-r5", "1.0-r0", Less),
        ("1.0_p1-r0", "1.0-r9", Greater),
        ("1.2.3-r0", "1.2.3-r0", Equal),
        ("3.19.1-r0", "3.19.0-r5", Greater),
        ("6.6.31-r0", "6.6.4-r0", Greater),
        ("2.4-r1", "2.4-r0", Greater),
        ("1.36.1-r15", "1.36.1-r2", Greater),
        ("20230506-r0", "20220614-r4", Greater),
        ("1.1.24-r10", "1.1.24-r9", Greater),
        ("1.2.4_git20230717-r4", "1.2.4-r4", Greater),
        ("1.2.4_git20230717-r4", "1.2.5-r0", Less),
        ("0.9.0_pre20231119-r0", "0.9.0-r0", Less),
        ("1.0~abc123", "1.0", Greater),
        ("1.0~abc", "1.0~abd", Less),
        ("1.0~abc-r1", "1.0~abc-r0", Greater),
        ("1.0~abc-r0", "1.0-r0", Greater),
        ("1.0_p1~abc", "1.0_p1", Greater),
        ("99999999999999999999999", "99999999999999999999998", Greater),
        ("1.99999999999999999999999", "1.100000000000000000000000", Less),
        ("18446744073709551616", "18446744073709551615", Greater),
        ("0.99f7", "0.99f6", Greater),
        ("0.99f7", "0.99g", Less),
        ("0.99f7", "0.99f", Greater),
    ];

    #[test]
    fn ordering_table() {
        for &(a, b, want) in ORDER {
            assert_eq!(compare(a, b), want, "compare({a:?}, {b:?})");
            assert_eq!(compare(b, a), want.reverse(), "compare({b:?}, {a:?})");
        }
    }

    const VALID: &[&str] = &[
        "0",
        "1",
        "1.0",
        "1.2.3.4.5.6",
        "1a",
        "1.2a",
        "1_alpha",
        "1_alpha1",
        "1_beta2_rc3",
        "1_p",
        "1_p1_p2",
        "1-r0",
        "1.0-r123",
        "1a_rc1-r2",
        "1.0~abcdef",
        "1.0~ABCDEF",
        "1.0~abc-r1",
        "0.0.0",
        "2023.01.01",
        "1_git20230101",
        "00001",
        "1.0_hg",
        "1.0_cvs1",
        "1.0_svn2",
        "1.0_pre",
        "20230506-r0",
        "0.99f7-r2",
        "1.0a1b",
    ];

    const INVALID: &[&str] = &[
        "",
        "a",
        "a1",
        ".1",
        "1.",
        "1..2",
        "1.a",
        "1aa",
        "1a.2",
        "1_",
        "1_foo",
        "1_RC1",
        "1_rc.1",
        "1-",
        "1-r",
        "1-ra",
        "1-x1",
        "1-r1-r2",
        "1-r1.2",
        "1-r1a",
        "1-r1_p",
        "1~",
        "1~xyz",
        "1~ab~cd",
        "1~ab_p",
        "1 ",
        " 1",
        "1.0-r0 ",
        "v1.0",
        "1,0",
        "1.0a.1",
        "1_p1a",
        "1-r1~abc",
        "1.0_rc1.2",
        "1/2",
        "1.0-R1",
    ];

    #[test]
    fn validation_table() {
        for v in VALID {
            assert!(is_valid(v), "{v:?} should be valid");
            assert!(Version::parse(v).is_ok());
        }
        for v in INVALID {
            assert!(!is_valid(v), "{v:?} should be invalid");
            assert_eq!(Version::parse(v), Err(InvalidVersion(v.to_string())));
        }
    }

    #[test]
    fn fuzzy_prefix() {
        let cases: &[(&str, &str, bool)] = &[
            ("1.2.3", "1.2", true),
            ("1.2", "1.2", true),
            ("1.2.3-r4", "1.2.3", true),
            ("1.2_rc1", "1.2", true),
            ("1.20", "1.2", false),
            ("1.3", "1.2", false),
            ("1.2", "1.2.3", false),
            ("6.6.31-r0", "6.6", true),
            ("6.7.1-r0", "6.6", false),
            ("1.2a", "1.2", true),
        ];
        for &(v, prefix, want) in cases {
            let (v, p) = (Version::parse(v).unwrap(), Version::parse(prefix).unwrap());
            assert_eq!(v.fuzzy_matches(&p), want, "{v} ~ {p}");
        }
    }

    #[test]
    fn enough_cases() {
        assert!(ORDER.len() + VALID.len() + INVALID.len() >= 100);
    }

    #[test]
    fn sort_is_total_on_real_versions() {
        let mut v = vec!["1.0-r1", "1.0_rc1", "1.0", "1.0_p1", "0.9", "1.0a", "1.0.1"];
        v.sort_by(|a, b| compare(a, b));
        assert_eq!(v, ["0.9", "1.0_rc1", "1.0", "1.0-r1", "1.0_p1", "1.0a", "1.0.1"]);
    }
}
