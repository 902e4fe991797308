//! `.PKGINFO`: a package's own metadata, `key = value` lines in the control member.

use super::dep::Dep;
use super::version::Version;
use super::{Error, Result};

/// Parsed `.PKGINFO`. Field names follow abuild's keys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PkgInfo {
    pub name: String,
    pub version: Version,
    pub description: String,
    pub url: String,
    pub build_date: u64,
    pub packager: String,
    /// Installed size in bytes (`size`).
    pub installed_size: u64,
    pub arch: String,
    pub origin: String,
    pub commit: String,
    pub maintainer: String,
    pub license: String,
    pub provider_priority: Option<u64>,
    pub replaces_priority: Option<u64>,
    #[serde(serialize_with = "display_list")]
    pub depends: Vec<Dep>,
    #[serde(serialize_with = "display_list")]
    pub provides: Vec<Dep>,
    #[serde(serialize_with = "display_list")]
    pub install_if: Vec<Dep>,
    #[serde(serialize_with = "display_list")]
    pub replaces: Vec<Dep>,
    pub triggers: Vec<String>,
    /// SHA-256 of the compressed data member, hex.
    pub datahash: Option<String>,
    /// Keys hyve does not interpret, kept in order.
    pub other: Vec<(String, String)>,
}

pub(crate) fn display_list<S: serde::Serializer, T: std::fmt::Display>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|d| d.to_string()))
}

impl PkgInfo {
    /// A minimal record to be filled in by a package writer.
    pub fn new(name: &str, version: Version, arch: &str) -> Self {
        PkgInfo {
            name: name.to_string(),
            version,
            description: String::new(),
            url: String::new(),
            build_date: 0,
            packager: String::new(),
            installed_size: 0,
            arch: arch.to_string(),
            origin: name.to_string(),
            commit: String::new(),
            maintainer: String::new(),
            license: String::new(),
            provider_priority: None,
            replaces_priority: None,
            depends: vec![],
            provides: vec![],
            install_if: vec![],
            replaces: vec![],
            triggers: vec![],
            datahash: None,
            other: vec![],
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<PkgInfo> {
        let err = |line: usize, detail: String| Error::PkgInfo { origin: origin.to_string(), line, detail };
        let mut name = None;
        let mut version = None;
        let mut info = PkgInfo::new("", Version::parse("0").expect("0 is a version"), "");
        info.origin.clear();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(" = ") else {
                return Err(err(n, format!("expected `key = value`, found {line:?}")));
            };
            let number =
                |v: &str| v.parse::<u64>().map_err(|_| err(n, format!("{key}: expected a number, found {v:?}")));
            let dep = |v: &str| Dep::parse(v).map_err(|e| err(n, e.to_string()));
            match key {
                "pkgname" => name = Some(value.to_string()),
                "pkgver" => version = Some(Version::parse(value).map_err(|e| err(n, e.to_string()))?),
                "pkgdesc" => info.description = value.to_string(),
                "url" => info.url = value.to_string(),
                "builddate" => info.build_date = number(value)?,
                "packager" => info.packager = value.to_string(),
                "size" => info.installed_size = number(value)?,
                "arch" => info.arch = value.to_string(),
                "origin" => info.origin = value.to_string(),
                "commit" => info.commit = value.to_string(),
                "maintainer" => info.maintainer = value.to_string(),
                "license" => info.license = value.to_string(),
                "provider_priority" => info.provider_priority = Some(number(value)?),
                "replaces_priority" => info.replaces_priority = Some(number(value)?),
                "depend" => info.depends.push(dep(value)?),
                "provides" => info.provides.push(dep(value)?),
                "install_if" => info.install_if.extend(Dep::parse_list(value).map_err(|e| err(n, e.to_string()))?),
                "replaces" => info.replaces.push(dep(value)?),
                "triggers" => info.triggers.extend(value.split_whitespace().map(str::to_string)),
                "datahash" => {
                    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(err(n, format!("datahash must be 64 hex digits, found {value:?}")));
                    }
                    info.datahash = Some(value.to_ascii_lowercase());
                }
                _ => info.other.push((key.to_string(), value.to_string())),
            }
        }
        info.name = name.filter(|s| !s.is_empty()).ok_or_else(|| err(0, "no pkgname line".into()))?;
        info.version = version.ok_or_else(|| err(0, "no pkgver line".into()))?;
        if info.arch.is_empty() {
            return Err(err(0, "no arch line".into()));
        }
        if info.origin.is_empty() {
            info.origin = info.name.clone();
        }
        Ok(info)
    }

    /// Serialises in abuild's key order. No date comment: the output is deterministic.
    pub fn to_text(&self) -> String {
        let mut out = String::from("# Generated by hyve\n");
        let mut kv = |k: &str, v: &str| {
            out.push_str(k);
            out.push_str(" = ");
            out.push_str(v);
            out.push('\n');
        };
        kv("pkgname", &self.name);
        kv("pkgver", self.version.as_str());
        kv("pkgdesc", &self.description);
        kv("url", &self.url);
        kv("builddate", &self.build_date.to_string());
        if !self.packager.is_empty() {
            kv("packager", &self.packager);
        }
        kv("size", &self.installed_size.to_string());
        kv("arch", &self.arch);
        kv("origin", &self.origin);
        if !self.commit.is_empty() {
            kv("commit", &self.commit);
        }
        if !self.maintainer.is_empty() {
            kv("maintainer", &self.maintainer);
        }
        if let Some(p) = self.provider_priority {
            kv("provider_priority", &p.to_string());
        }
        if let Some(p) = self.replaces_priority {
            kv("replaces_priority", &p.to_string());
        }
        kv("license", &self.license);
        for d in &self.replaces {
            kv("replaces", &d.to_string());
        }
        if !self.triggers.is_empty() {
            kv("triggers", &self.triggers.join(" "));
        }
        for d in &self.depends {
            kv("depend", &d.to_string());
        }
        for d in &self.provides {
            kv("provides", &d.to_string());
        }
        if !self.install_if.is_empty() {
            kv("install_if", &Dep::format_list(&self.install_if));
        }
        for (k, v) in &self.other {
            kv(k, v);
        }
        if let Some(h) = &self.datahash {
            kv("datahash", h);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "# Generated by abuild 3.6.0-r1\n# using fakeroot version 1.24\npkgname = libc6-compat\npkgver = 1.1.24-r10\npkgdesc = compatibility libraries for glibc\nurl = https://musl.libc.org/\nbuilddate = 1605857858\npackager = Buildozer <alpine-devel@lists.alpinelinux.org>\nsize = 12288\narch = noarch\norigin = musl\ncommit = 908046ad5f96c4c1df5541ff4b0251767e110c85\nmaintainer = Timo Teräs <timo.teras@iki.fi>\nlicense = MIT\n# automatically detected:\ndepend = musl=1.1.24-r10\ndatahash = 56d27513c411825630eaaf82d6789f7da5f0b260a1b8d3267ee0a95bef400582\n";

    #[test]
    fn parses_real_pkginfo() {
        let p = PkgInfo::parse(REAL, "t").unwrap();
        assert_eq!(p.name, "libc6-compat");
        assert_eq!(p.version.as_str(), "1.1.24-r10");
        assert_eq!(p.installed_size, 12288);
        assert_eq!(p.build_date, 1605857858);
        assert_eq!(p.depends[0].to_string(), "musl=1.1.24-r10");
        assert_eq!(p.origin, "musl");
        assert_eq!(p.datahash.as_deref(), Some("56d27513c411825630eaaf82d6789f7da5f0b260a1b8d3267ee0a95bef400582"));
    }

    #[test]
    fn round_trips_through_text() {
        let mut p = PkgInfo::parse(REAL, "t").unwrap();
        p.provides.push(Dep::parse("cmd:foo=1").unwrap());
        p.install_if = Dep::parse_list("a b=1").unwrap();
        p.triggers = vec!["/usr/share/x/*".into()];
        p.other.push(("pkgtype".into(), "x".into()));
        let again = PkgInfo::parse(&p.to_text(), "t").unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn errors_name_the_line() {
        let e = PkgInfo::parse("pkgname = a\npkgver = 1..0\narch = x86_64\n", "pkg.apk").unwrap_err().to_string();
        assert!(e.contains("pkg.apk") && e.contains("line 2"), "{e}");
        let e = PkgInfo::parse("pkgname = a\nnonsense\n", "p").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("key = value"), "{e}");
        let e = PkgInfo::parse("pkgver = 1\narch = x\n", "p").unwrap_err().to_string();
        assert!(e.contains("pkgname"), "{e}");
        let e = PkgInfo::parse("pkgname = a\npkgver = 1\narch = x\ndatahash = zz\n", "p").unwrap_err().to_string();
        assert!(e.contains("datahash"), "{e}");
    }
}
