//! `/etc/os-release` of a guest (os-release(5)), also the UKI's `.osrel` section.

/// The guest's os-release: hyve, like Alpine `branch`, the profile as its variant, and the
/// build's SOURCE_DATE_EPOCH as its build id.
pub fn os_release(profile: &str, branch: &str, epoch: u64) -> String {
    let branch = branch.trim_start_matches('v');
    format!(
        "NAME=\"hyve\"\nID=hyve\nID_LIKE=alpine\nVERSION_ID={branch}\nVARIANT_ID={profile}\nPRETTY_NAME=\"hyve {profile} (Alpine {branch})\"\nHOME_URL=\"https://github.com/hyve\"\nBUILD_ID={epoch}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_branch_without_its_v() {
        let text = os_release("minimal", "v3.24", 1_700_000_000);
        assert!(text.contains("VERSION_ID=3.24\n") && text.contains("VARIANT_ID=minimal\n"), "{text}");
        assert!(text.ends_with("BUILD_ID=1700000000\n"));
    }
}
