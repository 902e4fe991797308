//! `sbom.spdx.json` (SPDX 2.3) from a build's manifest, and the SPDX license expression for
//! each package's apk `license` field. The expressions are mapped by hand: the maintained
//! `spdx` crate parses strict (or slightly lax) SPDX expressions and rejects what Alpine's
//! `license` fields often are — several ids separated by spaces, words like `custom` — which
//! hyve must still turn into a valid expression (with `LicenseRef-`s), so the crate would not
//! replace this code, only sit beside it.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde_json::{json, Value};

use super::manifest::Manifest;

/// SPDX's license and exception ids, lower case → canonical (ids match case-insensitively).
fn spdx_list(text: &'static str) -> HashMap<String, &'static str> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| (l.to_ascii_lowercase(), l)).collect()
}

fn known_licenses() -> &'static HashMap<String, &'static str> {
    static IDS: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    IDS.get_or_init(|| spdx_list(include_str!("spdx-licenses.txt")))
}

fn known_exceptions() -> &'static HashMap<String, &'static str> {
    static IDS: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    IDS.get_or_init(|| spdx_list(include_str!("spdx-exceptions.txt")))
}

/// `LicenseRef-` + `text` made an idstring.
fn license_ref(text: &str) -> String {
    let id: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    format!("LicenseRef-{id}")
}

/// An SPDX license expression for an apk's `license` field. Alpine asks for SPDX ids and
/// expressions; older packages list several ids separated by spaces (all apply), write
/// operators in lower case, or use words that are no SPDX id (`custom`, `Public-Domain`).
/// Ids SPDX does not list become `LicenseRef-`s whose text is recorded in `refs`; what does
/// not parse as an expression becomes one `LicenseRef-` as a whole.
fn license_expression(raw: &str, refs: &mut BTreeMap<String, String>) -> String {
    let raw = raw.trim();
    if raw.is_empty() {
        return "NOASSERTION".into();
    }
    let mut tokens: Vec<String> =
        raw.split_whitespace()
            .flat_map(split_parens)
            .map(|t| {
                if OPERATORS.contains(&t.to_ascii_uppercase().as_str()) {
                    t.to_ascii_uppercase()
                } else {
                    t.to_string()
                }
            })
            .collect();
    let has_operator = tokens.iter().any(|t| OPERATORS.contains(&t.as_str()));
    if !has_operator && tokens.iter().all(|t| is_license_id(t)) {
        tokens = itertools_join(&tokens, "AND");
    }
    let refs_before = refs.clone();
    let view: Vec<&str> = tokens.iter().map(String::as_str).collect();
    if is_expression(&view) {
        let mut out = Vec::new();
        for (i, t) in view.iter().enumerate() {
            let after_with = i > 0 && view[i - 1] == "WITH";
            let canonical = if OPERATORS.contains(t) || *t == "(" || *t == ")" {
                Some(t.to_string())
            } else if after_with {
                known_exceptions().get(&t.to_ascii_lowercase()).map(|c| c.to_string())
            } else {
                let (base, plus) = t.strip_suffix('+').map_or((*t, ""), |b| (b, "+"));
                match known_licenses().get(&base.to_ascii_lowercase()) {
                    Some(c) => Some(format!("{c}{plus}")),
                    None => {
                        let id = license_ref(t);
                        refs.insert(id.clone(), t.to_string());
                        Some(id)
                    }
                }
            };
            match canonical {
                Some(c) => out.push(c),
                None => {
                    // An unknown exception: no LicenseRef may follow WITH.
                    out.clear();
                    break;
                }
            }
        }
        if !out.is_empty() {
            return out.join(" ").replace("( ", "(").replace(" )", ")");
        }
        *refs = refs_before;
    }
    let id = license_ref(raw);
    refs.insert(id.clone(), raw.to_string());
    id
}

/// `a b c` → `a AND b AND c`.
fn itertools_join(ids: &[String], operator: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(operator.to_string());
        }
        out.push(id.clone());
    }
    out
}

const OPERATORS: [&str; 3] = ["AND", "OR", "WITH"];

/// An SPDX idstring: letters, digits, `.`, `-`, `+` (a trailing `+` means "or later").
fn is_license_id(t: &str) -> bool {
    !t.is_empty() && !OPERATORS.contains(&t) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.+".contains(&b))
}

/// SPDX Annex D, without precedence: `operand (OP operand)*`, an operand being an id or a
/// parenthesised expression.
fn is_expression(tokens: &[&str]) -> bool {
    fn expression(t: &[&str], mut i: usize) -> Option<usize> {
        i = operand(t, i)?;
        while t.get(i).is_some_and(|x| OPERATORS.contains(x)) {
            i = operand(t, i + 1)?;
        }
        Some(i)
    }
    fn operand(t: &[&str], i: usize) -> Option<usize> {
        match *t.get(i)? {
            "(" => {
                let j = expression(t, i + 1)?;
                (t.get(j) == Some(&")")).then_some(j + 1)
            }
            id if is_license_id(id) => Some(i + 1),
            _ => None,
        }
    }
    expression(tokens, 0) == Some(tokens.len())
}

/// `(MIT` → `(`, `MIT`.
fn split_parens(token: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = token;
    while let Some(r) = rest.strip_prefix('(') {
        out.push("(");
        rest = r;
    }
    let mut closing = 0;
    while let Some(r) = rest.strip_suffix(')') {
        closing += 1;
        rest = r;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out.extend(std::iter::repeat_n(")", closing));
    out
}

/// `Name <mail>` → SPDX's `Person: Name (mail)`.
fn spdx_person(maintainer: &str) -> Option<String> {
    let m = maintainer.trim();
    if m.is_empty() {
        return None;
    }
    Some(match m.split_once('<') {
        Some((name, mail)) => format!("Person: {} ({})", name.trim(), mail.trim_end_matches('>').trim()),
        None => format!("Person: {m}"),
    })
}

/// An SPDXID for `text`: letters, digits and `-` as they are, anything else as `.XX` hex
/// (`g++` → `g.2b.2b`), so two package names never share an id.
fn spdx_id(prefix: &str, text: &str) -> String {
    let safe: String = text
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { char::from(b).to_string() } else { format!(".{b:02x}") })
        .collect();
    format!("SPDXRef-{prefix}-{safe}")
}

/// The SPDX 2.3 document for a build: the image as the described package, containing one
/// package per apk (version, supplier, source package, license, download location, SHA-256 and
/// a purl), the booted kernel (generated from the kernel package) and each overlay.
pub fn spdx(m: &Manifest, kernel_sha256: Option<&str>) -> Value {
    let image_id = "SPDXRef-Image";
    let mut license_refs = BTreeMap::new();
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": format!("hyve-{}", m.profile),
        "versionInfo": format!("{}-{}", m.branch.trim_start_matches('v'), m.source_date_epoch),
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "builtDate": crate::epoch::iso8601(m.source_date_epoch),
        "description": format!("hyve guest image, profile {} for {}, Alpine {}", m.profile, m.arch, m.branch),
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id,
    })];
    let contains =
        |id: &str| json!({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": id});
    let distro = format!("alpine-{}", m.branch.trim_start_matches('v'));
    for p in &m.packages {
        let id = spdx_id("Package-apk", &p.name);
        let (file, url) = m.apk_location(p);
        let mut pkg = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "packageFileName": file,
            "supplier": spdx_person(&p.maintainer).unwrap_or_else(|| "NOASSERTION".into()),
            "downloadLocation": url,
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": p.sha256}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license_expression(&p.license, &mut license_refs),
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("built from Alpine aport {} ({} repository)", p.origin, p.repository),
            "summary": p.description,
            "builtDate": crate::epoch::iso8601(p.build_date),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:apk/alpine/{}@{}?arch={}&distro={distro}", p.name, p.version, m.arch),
            }],
        });
        if !p.url.is_empty() {
            pkg["homepage"] = json!(p.url);
        }
        relationships.push(contains(&id));
        packages.push(pkg);
    }
    if let Some(sha) = kernel_sha256 {
        let id = "SPDXRef-Kernel";
        packages.push(json!({
            "SPDXID": id,
            "name": "kernel",
            "versionInfo": m.kernel.release.clone().unwrap_or_else(|| m.kernel.version.clone()),
            "packageFileName": "kernel",
            "supplier": "NOASSERTION",
            "downloadLocation": "NONE",
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": sha}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "OPERATING-SYSTEM",
            "summary": format!("the kernel the VMM boots, taken from {} {}", m.kernel.package, m.kernel.version),
        }));
        relationships.push(contains(id));
        relationships.push(json!({
            "spdxElementId": id, "relationshipType": "GENERATED_FROM",
            "relatedSpdxElement": spdx_id("Package-apk", &m.kernel.package),
        }));
    }
    for o in &m.overlays {
        let id = spdx_id("Overlay", &o.name);
        packages.push(json!({
            "SPDXID": id,
            "name": format!("overlay/{}", o.name),
            "supplier": "NOASSERTION",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": o.sha256}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "OTHER",
            "summary": format!("{} entries laid over the packages; the checksum is over their sorted listing (path, type, mode, owner, content SHA-1)", o.entries),
        }));
        relationships.push(contains(&id));
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("hyve-{}-{}", m.profile, m.arch),
        "documentNamespace": format!(
            "https://github.com/hyve/spdx/{}-{}-{}-{}",
            m.profile, m.arch, m.source_date_epoch, m.lock.sha256
        ),
        "creationInfo": {
            "created": crate::epoch::iso8601(m.source_date_epoch),
            "creators": [format!("Tool: hyve-{}", m.hyve_version)],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !license_refs.is_empty() {
        doc["hasExtractedLicensingInfos"] = license_refs
            .into_iter()
            .map(|(id, text)| json!({"licenseId": id, "extractedText": format!("The apk's license field: {text}")}))
            .collect();
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_fields_become_expressions() {
        let mut refs = BTreeMap::new();
        let mut e = |s: &str| license_expression(s, &mut refs);
        assert_eq!(e("GPL-2.0-only WITH Linux-syscall-note OR MIT"), "GPL-2.0-only WITH Linux-syscall-note OR MIT");
        assert_eq!(e("MIT"), "MIT");
        assert_eq!(e("mit"), "MIT", "ids match case-insensitively");
        assert_eq!(e("GPL-2.0-or-later AND LGPL-2.1-or-later"), "GPL-2.0-or-later AND LGPL-2.1-or-later");
        assert_eq!(e("MIT BSD-2-Clause"), "MIT AND BSD-2-Clause", "old space-separated lists");
        assert_eq!(e("(MIT OR Apache-2.0) AND BSD-3-Clause"), "(MIT OR Apache-2.0) AND BSD-3-Clause");
        assert_eq!(e("GPL-2.0-only WITH Linux-syscall-note"), "GPL-2.0-only WITH Linux-syscall-note");
        assert_eq!(e("GPL-2.0+"), "GPL-2.0+");
        assert_eq!(e(""), "NOASSERTION");
        // Alpine's own oddities, from the real indexes in tests/fixtures/alpine.
        assert_eq!(e("custom"), "LicenseRef-custom");
        assert_eq!(e("GPL-2.0 or Artistic"), "GPL-2.0 OR LicenseRef-Artistic");
        assert_eq!(e("Public-Domain"), "LicenseRef-Public-Domain");
        assert_eq!(e("Public Domain, see COPYING"), "LicenseRef-Public-Domain--see-COPYING");
        assert_eq!(e("MIT AND"), "LicenseRef-MIT-AND");
        assert_eq!(e("GPL-2.0-only WITH No-Such-exception"), "LicenseRef-GPL-2.0-only-WITH-No-Such-exception");
        assert_eq!(refs.len(), 6, "{refs:?}");
    }

    #[test]
    fn people_and_ids() {
        assert_eq!(
            spdx_person("Natanael Copa <ncopa@alpinelinux.org>").unwrap(),
            "Person: Natanael Copa (ncopa@alpinelinux.org)"
        );
        assert_eq!(spdx_person(" "), None);
        assert_eq!(spdx_id("Package-apk", "py3-foo_bar+x"), "SPDXRef-Package-apk-py3-foo.5fbar.2bx");
        assert_ne!(spdx_id("P", "a_b"), spdx_id("P", "a-b"));
    }
}
