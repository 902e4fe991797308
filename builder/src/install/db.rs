//! `/lib/apk/db/installed` for the guest's apk.

use super::InstalledPackage;
use crate::apk::archive::EntryKind;
use crate::apk::Dep;

/// `/lib/apk/db/installed`, so `apk` inside the guest knows what is there.
pub fn installed_db(packages: &[InstalledPackage]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for p in packages {
        let i = &p.info;
        let list = Dep::format_list;
        out.push_str(&format!(
            "C:{}\nP:{}\nV:{}\nA:{}\nS:0\nI:{}\nT:{}\nU:{}\nL:{}\no:{}\n",
            p.q1, i.name, i.version, i.arch, i.installed_size, i.description, i.url, i.license, i.origin
        ));
        if !i.maintainer.is_empty() {
            out.push_str(&format!("m:{}\n", i.maintainer));
        }
        out.push_str(&format!("t:{}\n", i.build_date));
        if !i.commit.is_empty() {
            out.push_str(&format!("c:{}\n", i.commit));
        }
        for (tag, deps) in [("D", &i.depends), ("p", &i.provides), ("i", &i.install_if), ("r", &i.replaces)] {
            if !deps.is_empty() {
                out.push_str(&format!("{tag}:{}\n", list(deps)));
            }
        }
        let mut dir = None::<String>;
        for (path, kind, sha1) in &p.files {
            if *kind == EntryKind::Dir {
                out.push_str(&format!("F:{path}\n"));
                dir = Some(path.clone());
                continue;
            }
            let (parent, base) = path.rsplit_once('/').unwrap_or(("", path));
            if dir.as_deref() != Some(parent) {
                out.push_str(&format!("F:{parent}\n"));
                dir = Some(parent.to_string());
            }
            out.push_str(&format!("R:{base}\n"));
            if let Some(d) = sha1 {
                out.push_str(&format!("Z:Q1{}\n", base64::engine::general_purpose::STANDARD.encode(d)));
            }
        }
        out.push('\n');
    }
    out
}
