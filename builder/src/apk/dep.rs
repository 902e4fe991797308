//! Dependency atoms: `[!]name[@tag][op version]` as found in `D:`, `p:`, `i:` index fields,
//! `.PKGINFO` lines and profiles. Names may carry a namespace (`so:libc.musl-x86_64.so.1`,
//! `cmd:sh`, `pc:zlib`); the namespace is part of the name, as in apk-tools.

use std::fmt;

use super::version::Version;

/// A version constraint operator. `~` is apk's fuzzy (prefix) match; `<~` and `>~` combine
/// it with an inequality as apk-tools does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Less,
    LessEqual,
    LessFuzzy,
    Equal,
    Fuzzy,
    GreaterEqual,
    GreaterFuzzy,
    Greater,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<" => Op::Less,
            "<=" => Op::LessEqual,
            "<~" => Op::LessFuzzy,
            "=" => Op::Equal,
            "~" | "=~" | "~=" => Op::Fuzzy,
            ">=" => Op::GreaterEqual,
            ">~" => Op::GreaterFuzzy,
            ">" => Op::Greater,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Less => "<",
            Op::LessEqual => "<=",
            Op::LessFuzzy => "<~",
            Op::Equal => "=",
            Op::Fuzzy => "~",
            Op::GreaterEqual => ">=",
            Op::GreaterFuzzy => ">~",
            Op::Greater => ">",
        }
    }

    /// Whether a candidate `version` satisfies `op constraint`.
    pub fn matches(self, version: &Version, constraint: &Version) -> bool {
        use std::cmp::Ordering::*;
        let fuzzy_equal = || version.fuzzy_matches(constraint);
        let ord = version.compare(constraint);
        match self {
            Op::Less => ord == Less,
            Op::LessEqual => ord != Greater,
            Op::LessFuzzy => ord == Less || fuzzy_equal(),
            Op::Equal => ord == Equal,
            Op::Fuzzy => fuzzy_equal(),
            Op::GreaterEqual => ord != Less,
            Op::GreaterFuzzy => ord == Greater || fuzzy_equal(),
            Op::Greater => ord == Greater,
        }
    }
}

/// The namespace a name lives in; plain package names have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Package,
    SharedObject,
    Command,
    PkgConfig,
}

/// One dependency atom.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dep {
    /// `!name`: the named package must not be installed (or must not match the version).
    pub conflict: bool,
    /// The full name including any `so:` / `cmd:` / `pc:` prefix.
    pub name: String,
    /// `@tag`: only packages from the repository with this tag may satisfy it.
    pub tag: Option<String>,
    pub constraint: Option<(Op, Version)>,
}

/// The dependency `{atom}` is malformed: {reason}.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("invalid dependency {atom:?}: {reason}")]
#[serde(tag = "kind", rename = "invalid_dep")]
pub struct InvalidDep {
    pub atom: String,
    pub reason: String,
}

/// apk-tools takes everything up to an operator as the name (busybox provides `cmd:[`);
/// only whitespace and control characters can never be part of one.
fn is_name_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control()
}

impl Dep {
    pub fn parse(atom: &str) -> Result<Dep, InvalidDep> {
        let bad = |reason: &str| InvalidDep { atom: atom.to_string(), reason: reason.to_string() };
        let (conflict, rest) = match atom.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, atom),
        };
        let op_at = rest.find(['<', '>', '=', '~']);
        let (name_tag, constraint) = match op_at {
            None => (rest, None),
            Some(i) => {
                let (name_tag, tail) = rest.split_at(i);
                let op_len = tail.find(|c| !"<>=~".contains(c)).unwrap_or(tail.len());
                let (op_text, ver_text) = tail.split_at(op_len);
                if op_text == "><" {
                    return Err(bad("checksum pins (`><Q1...`) are not supported; pin a version"));
                }
                let op = Op::parse(op_text)
                    .ok_or_else(|| bad(&format!("unknown operator {op_text:?}; use < <= = >= > ~")))?;
                let ver = Version::parse(ver_text).map_err(|e| bad(&e.to_string()))?;
                (name_tag, Some((op, ver)))
            }
        };
        let (name, tag) = match name_tag.split_once('@') {
            Some((name, tag)) if !tag.is_empty() => (name, Some(tag.to_string())),
            Some(_) => return Err(bad("empty repository tag after '@'")),
            None => (name_tag, None),
        };
        if name.is_empty() {
            return Err(bad("missing package name"));
        }
        if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
            return Err(bad(&format!("character {c:?} is not allowed in a package name")));
        }
        Ok(Dep { conflict, name: name.to_string(), tag, constraint })
    }

    /// Parses a whitespace-separated list (`D:` / `p:` / `i:` fields).
    pub fn parse_list(s: &str) -> Result<Vec<Dep>, InvalidDep> {
        s.split_ascii_whitespace().map(Dep::parse).collect()
    }

    /// Formats a list the way `D:` / `p:` / `i:` fields and `.PKGINFO install_if` hold it.
    pub fn format_list(deps: &[Dep]) -> String {
        deps.iter().map(Dep::to_string).collect::<Vec<_>>().join(" ")
    }

    pub fn namespace(&self) -> Namespace {
        match self.name.split_once(':') {
            Some(("so", _)) => Namespace::SharedObject,
            Some(("cmd", _)) => Namespace::Command,
            Some(("pc", _)) => Namespace::PkgConfig,
            _ => Namespace::Package,
        }
    }

    /// Whether a package (or a versioned provide) at `version` satisfies the version part of
    /// this atom, ignoring `conflict`. An unversioned provide (`None`) satisfies only
    /// unconstrained atoms.
    pub fn version_matches(&self, version: Option<&Version>) -> bool {
        match (&self.constraint, version) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((op, want)), Some(have)) => op.matches(have, want),
        }
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.conflict {
            f.write_str("!")?;
        }
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, "@{tag}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, "{}{}", op.as_str(), v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_atoms() {
        let d = Dep::parse("busybox").unwrap();
        assert_eq!(
            (d.conflict, d.name.as_str(), d.tag.is_none(), d.constraint.is_none()),
            (false, "busybox", true, true)
        );

        let d = Dep::parse("!musl<1.2").unwrap();
        assert!(d.conflict);
        assert_eq!(d.name, "musl");
        assert_eq!(d.constraint, Some((Op::Less, v("1.2"))));

        let d = Dep::parse("docker@community>=24.0.5-r0").unwrap();
        assert_eq!(d.tag.as_deref(), Some("community"));
        assert_eq!(d.constraint, Some((Op::GreaterEqual, v("24.0.5-r0"))));

        let d = Dep::parse("so:libc.musl-x86_64.so.1").unwrap();
        assert_eq!(d.namespace(), Namespace::SharedObject);
        assert_eq!(Dep::parse("cmd:sh").unwrap().namespace(), Namespace::Command);
        assert_eq!(Dep::parse("pc:zlib=1.3").unwrap().namespace(), Namespace::PkgConfig);
        assert_eq!(Dep::parse("linux-virt").unwrap().namespace(), Namespace::Package);

        let d = Dep::parse("so:libcrypto.so.3=3.1.4-r5").unwrap();
        assert_eq!(d.name, "so:libcrypto.so.3");
        assert_eq!(d.constraint, Some((Op::Equal, v("3.1.4-r5"))));

        for (atom, op) in [
            ("a<1", Op::Less),
            ("a<=1", Op::LessEqual),
            ("a=1", Op::Equal),
            ("a~1", Op::Fuzzy),
            ("a>=1", Op::GreaterEqual),
            ("a>1", Op::Greater),
            ("a<~1", Op::LessFuzzy),
            ("a>~1", Op::GreaterFuzzy),
        ] {
            assert_eq!(Dep::parse(atom).unwrap().constraint.unwrap().0, op, "{atom}");
        }
    }

    #[test]
    fn round_trips() {
        for atom in ["busybox", "cmd:[", "!foo", "so:libz.so.1=1.3-r0", "docker@edge>=1.0", "x~1.2", "cmd:ls", "a<~2"] {
            assert_eq!(Dep::parse(atom).unwrap().to_string(), atom);
        }
    }

    #[test]
    fn rejects_bad_atoms() {
        for atom in ["", "!", "=1.0", "foo=", "foo=bar", "foo>>1", "foo@", "fo o", "foo<=>1", "foo><Q1abc=", "foo\tbar"]
        {
            assert!(Dep::parse(atom).is_err(), "{atom:?} should be rejected");
        }
        let e = Dep::parse("foo=1..2").unwrap_err();
        assert!(e.to_string().contains("foo=1..2"), "{e}");
    }

    #[test]
    fn constraint_matching() {
        let d = Dep::parse("musl>=1.2.4").unwrap();
        assert!(d.version_matches(Some(&v("1.2.4-r0"))));
        assert!(d.version_matches(Some(&v("1.2.5"))));
        assert!(!d.version_matches(Some(&v("1.2.3-r9"))));
        assert!(!d.version_matches(None));
        assert!(Dep::parse("musl").unwrap().version_matches(None));
        let d = Dep::parse("linux-virt~6.6").unwrap();
        assert!(d.version_matches(Some(&v("6.6.31-r0"))));
        assert!(!d.version_matches(Some(&v("6.7.0-r0"))));
        let d = Dep::parse("x<~2").unwrap();
        assert!(d.version_matches(Some(&v("2.5"))));
        assert!(d.version_matches(Some(&v("1.9"))));
        assert!(!d.version_matches(Some(&v("3"))));
        let d = Dep::parse("x>~2").unwrap();
        assert!(d.version_matches(Some(&v("2.0.1"))));
        assert!(d.version_matches(Some(&v("3"))));
        assert!(!d.version_matches(Some(&v("1.9"))));
        let list = Dep::parse_list("so:libc.musl-x86_64.so.1  busybox>=1.36 !foo").unwrap();
        assert_eq!(list.len(), 3);
    }
}
