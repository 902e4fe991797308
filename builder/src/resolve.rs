//! Dependency resolution with apk's rules: packages and versioned provides behave alike;
//! unversioned provides ("virtual" names) are satisfied by whatever already provides them,
//! else chosen by `provider_priority`; `!conflicts`; `install_if`; repositories in the
//! profile's order; the highest version that satisfies everything.
//!
//! The search is greedy with learning: pick the best candidate for each requirement in a
//! deterministic order; when a later requirement or conflict rules out an earlier choice,
//! remember that as a constraint and start again. Every map that decides an order is a
//! `BTreeMap`, so the result is the same on every run.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::apk::index::IndexRecord;
use crate::apk::{Arch, Dep, Version};

/// One repository's records, in the profile's order of preference.
#[derive(Debug, Clone, Copy)]
pub struct Repo<'a> {
    /// The repository name (`main`, `community`); also its `@tag`.
    pub name: &'a str,
    pub records: &'a [IndexRecord],
}

/// A chosen package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Chosen {
    pub record: IndexRecord,
    pub repository: String,
    /// The first chain of requirements that pulled it in, from `world`.
    pub required_by: Vec<String>,
}

/// The resolved set, in install order: every package after the packages it depends on
/// (cycles broken by name), ties by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub packages: Vec<Chosen>,
}

/// Why a world cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResolveError {
    /// Nothing in any repository provides the name.
    #[error("no package provides {dep} (required by {chain}); check the name, or add the repository that has it")]
    Missing { dep: String, chain: String },
    /// The index lists the name only for another architecture.
    #[error("{dep} (required by {chain}) is in the index only as {found}; a package for another architecture is never installed — the repository is broken or mixed up")]
    WrongArch { dep: String, chain: String, found: String },
    /// Providers exist, but none satisfies every constraint.
    #[error("cannot satisfy {dep} (required by {chain}): {why}")]
    Unsatisfiable { dep: String, chain: String, why: String },
    /// A virtual name with several providers and no `provider_priority` to choose one.
    #[error(
        "{dep} is virtual (required by {chain}) and provided by {providers}; add one of them to the profile's packages"
    )]
    Ambiguous { dep: String, chain: String, providers: String },
    /// Conflicting requirements that learning could not untangle.
    #[error("conflict: {detail}")]
    Conflict { detail: String },
}

#[derive(Debug, Clone)]
struct Cand<'a> {
    rec: &'a IndexRecord,
    repo: usize,
}

/// A candidate for a name: package index and the version it provides that name at
/// (`None` for an unversioned provide).
#[derive(Debug, Clone)]
struct Provider {
    cand: usize,
    version: Option<Version>,
}

struct Universe<'a> {
    repos: Vec<&'a str>,
    /// Versions to keep when they still satisfy everything (a lock being updated).
    prefer: &'a BTreeMap<String, Version>,
    cands: Vec<Cand<'a>>,
    providers: BTreeMap<&'a str, Vec<Provider>>,
    install_if: Vec<usize>,
    /// Records skipped for being built for another architecture, by name (for the error).
    foreign: BTreeMap<&'a str, &'a IndexRecord>,
    arch: Arch,
}

impl<'a> Universe<'a> {
    fn new(repos: &[Repo<'a>], arch: Arch, prefer: &'a BTreeMap<String, Version>) -> Self {
        let mut cands = Vec::new();
        let mut foreign = BTreeMap::new();
        for (i, repo) in repos.iter().enumerate() {
            for rec in repo.records {
                if rec.arch != arch.as_str() && rec.arch != "noarch" {
                    foreign.insert(rec.name.as_str(), rec);
                } else if rec.uninstallable.is_none() {
                    cands.push(Cand { rec, repo: i });
                }
            }
        }
        let mut providers: BTreeMap<&'a str, Vec<Provider>> = BTreeMap::new();
        let mut install_if = Vec::new();
        for (i, c) in cands.iter().enumerate() {
            providers.entry(&c.rec.name).or_default().push(Provider { cand: i, version: Some(c.rec.version.clone()) });
            for p in &c.rec.provides {
                let version = p.constraint.as_ref().map(|(_, v)| v.clone());
                providers.entry(&p.name).or_default().push(Provider { cand: i, version });
            }
            if !c.rec.install_if.is_empty() {
                install_if.push(i);
            }
        }
        Universe { repos: repos.iter().map(|r| r.name).collect(), prefer, cands, providers, install_if, foreign, arch }
    }

    fn name(&self, cand: usize) -> &'a str {
        &self.cands[cand].rec.name
    }

    /// apk's preference between two providers of `name` (Greater = better): a preferred
    /// (locked) version, then the higher provided version, then the higher package version,
    /// then `provider_priority`, then the earlier repository, then name and checksum so the
    /// order is total.
    fn compare(&self, a: &Provider, b: &Provider) -> Ordering {
        let (ca, cb) = (&self.cands[a.cand], &self.cands[b.cand]);
        let preferred = |c: &Cand| self.prefer.get(&c.rec.name).is_some_and(|v| v == &c.rec.version);
        let by_preference = preferred(ca).cmp(&preferred(cb));
        if by_preference != Ordering::Equal {
            return by_preference;
        }
        let by_provided = match (&a.version, &b.version) {
            (Some(x), Some(y)) => x.compare(y),
            _ => Ordering::Equal,
        };
        by_provided
            .then_with(|| {
                if ca.rec.name == cb.rec.name {
                    ca.rec.version.compare(&cb.rec.version)
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| ca.rec.provider_priority.unwrap_or(0).cmp(&cb.rec.provider_priority.unwrap_or(0)))
            .then_with(|| cb.repo.cmp(&ca.repo))
            .then_with(|| cb.rec.name.cmp(&ca.rec.name))
            .then_with(|| cb.rec.checksum.cmp(&ca.rec.checksum))
    }
}

/// What an attempt learned when a choice turned out wrong.
enum Learned {
    /// The package with this name must satisfy the dep.
    Constraint(String, Dep),
    /// The dep (a `!conflict`) must hold for every choice.
    Forbid(Dep),
}

#[derive(Default)]
struct Knowledge {
    constraints: BTreeMap<String, Vec<Dep>>,
    forbidden: Vec<Dep>,
}

impl Knowledge {
    fn add(&mut self, l: Learned) -> bool {
        match l {
            Learned::Constraint(name, dep) => {
                let list = self.constraints.entry(name).or_default();
                if list.contains(&dep) {
                    return false;
                }
                list.push(dep);
            }
            Learned::Forbid(dep) => {
                if self.forbidden.contains(&dep) {
                    return false;
                }
                self.forbidden.push(dep);
            }
        }
        true
    }
}

struct Attempt<'u, 'a> {
    u: &'u Universe<'a>,
    k: &'u Knowledge,
    /// package name -> candidate
    selected: BTreeMap<&'a str, usize>,
    /// provided name -> providers among the selected
    provided: BTreeMap<&'a str, Vec<Provider>>,
    chains: BTreeMap<usize, Vec<String>>,
    conflicts: Vec<(Dep, Vec<String>)>,
}

enum Outcome {
    Learn(Learned),
    Fail(ResolveError),
}

fn chain_text(chain: &[String]) -> String {
    chain.join(" -> ")
}

impl<'u, 'a> Attempt<'u, 'a> {
    fn tag_ok(&self, dep: &Dep, cand: usize) -> bool {
        dep.tag.as_deref().is_none_or(|t| self.u.repos[self.u.cands[cand].repo] == t)
    }

    fn satisfied(&self, dep: &Dep) -> bool {
        self.provided
            .get(dep.name.as_str())
            .is_some_and(|ps| ps.iter().any(|p| dep.version_matches(p.version.as_ref()) && self.tag_ok(dep, p.cand)))
    }

    /// Whether choosing `cand` breaks a conflict or a learned constraint, or clashes with
    /// what is already selected.
    fn allowed(&self, cand: usize) -> bool {
        let c = &self.u.cands[cand];
        let violates = |d: &Dep| {
            (d.name == c.rec.name && d.version_matches(Some(&c.rec.version)))
                || c.rec
                    .provides
                    .iter()
                    .any(|p| p.name == d.name && d.version_matches(p.constraint.as_ref().map(|(_, v)| v)))
        };
        if self.k.forbidden.iter().chain(self.conflicts.iter().map(|(d, _)| d)).any(violates) {
            return false;
        }
        if let Some(cs) = self.k.constraints.get(c.rec.name.as_str()) {
            if !cs.iter().all(|d| d.version_matches(Some(&c.rec.version))) {
                return false;
            }
        }
        if self.selected.get(c.rec.name.as_str()).is_some_and(|&s| s != cand) {
            return false;
        }
        // Two packages may not provide the same name with a version (apk: "conflict: same
        // name provided").
        c.rec.provides.iter().filter(|p| p.constraint.is_some()).all(|p| {
            self.provided.get(p.name.as_str()).is_none_or(|ps| ps.iter().all(|q| q.cand == cand || q.version.is_none()))
        })
    }

    fn select(&mut self, cand: usize, chain: Vec<String>, queue: &mut VecDeque<(Dep, Vec<String>)>) {
        let c = &self.u.cands[cand];
        self.selected.insert(&c.rec.name, cand);
        self.provided.entry(&c.rec.name).or_default().push(Provider { cand, version: Some(c.rec.version.clone()) });
        for p in &c.rec.provides {
            let version = p.constraint.as_ref().map(|(_, v)| v.clone());
            self.provided.entry(&p.name).or_default().push(Provider { cand, version });
        }
        let mut next = chain.clone();
        next.push(format!("{}-{}", c.rec.name, c.rec.version));
        for d in &c.rec.depends {
            queue.push_back((d.clone(), next.clone()));
        }
        self.chains.insert(cand, chain);
    }

    /// Why no provider of `dep` could be chosen, for the error message.
    fn explain(&self, dep: &Dep, providers: &[Provider]) -> String {
        let mut seen = BTreeSet::new();
        let mut parts = Vec::new();
        for p in providers {
            let c = &self.u.cands[p.cand];
            let label = format!("{}-{} ({})", c.rec.name, c.rec.version, self.u.repos[c.repo]);
            if !seen.insert(label.clone()) {
                continue;
            }
            let reason = if !dep.version_matches(p.version.as_ref()) {
                "version does not match".to_string()
            } else if !self.tag_ok(dep, p.cand) {
                format!("not in repository @{}", dep.tag.as_deref().unwrap_or_default())
            } else if let Some(&s) = self.selected.get(c.rec.name.as_str()).filter(|&&s| s != p.cand) {
                format!("{}-{} is already chosen", c.rec.name, self.u.cands[s].rec.version)
            } else {
                "excluded by a conflict".to_string()
            };
            parts.push(format!("{label}: {reason}"));
        }
        if parts.len() > 8 {
            let more = parts.len() - 8;
            parts.truncate(8);
            parts.push(format!("and {more} more"));
        }
        format!("available: {}", parts.join("; "))
    }

    fn require(
        &mut self,
        dep: Dep,
        chain: Vec<String>,
        queue: &mut VecDeque<(Dep, Vec<String>)>,
        deferred: &mut Vec<(Dep, Vec<String>)>,
    ) -> Result<(), Outcome> {
        if dep.conflict {
            let positive = Dep { conflict: false, ..dep.clone() };
            if self.satisfied(&positive) {
                return Err(Outcome::Learn(Learned::Forbid(positive)));
            }
            self.conflicts.push((positive, chain));
            return Ok(());
        }
        if self.satisfied(&dep) {
            return Ok(());
        }
        let Some(providers) = self.u.providers.get(dep.name.as_str()) else {
            let e = match self.u.foreign.get(dep.name.as_str()) {
                Some(rec) => ResolveError::WrongArch {
                    dep: dep.to_string(),
                    chain: chain_text(&chain),
                    found: format!(
                        "{}-{}, built for {} (this build is {})",
                        rec.name, rec.version, rec.arch, self.u.arch
                    ),
                },
                None => ResolveError::Missing { dep: dep.to_string(), chain: chain_text(&chain) },
            };
            return Err(Outcome::Fail(e));
        };
        let usable: Vec<&Provider> = providers
            .iter()
            .filter(|p| dep.version_matches(p.version.as_ref()) && self.tag_ok(&dep, p.cand) && self.allowed(p.cand))
            .collect();
        if usable.is_empty() {
            // If the name is taken by a package at another version, that choice was wrong.
            if let Some(p) = providers.iter().find(|p| {
                dep.version_matches(p.version.as_ref())
                    && self.selected.get(self.u.name(p.cand)).is_some_and(|&s| s != p.cand)
                    && self.u.cands[p.cand].rec.name == dep.name
            }) {
                return Err(Outcome::Learn(Learned::Constraint(self.u.name(p.cand).to_string(), dep.clone())));
            }
            return Err(Outcome::Fail(ResolveError::Unsatisfiable {
                dep: dep.to_string(),
                chain: chain_text(&chain),
                why: self.explain(&dep, providers),
            }));
        }
        if usable.iter().all(|p| p.version.is_none()) {
            deferred.push((dep, chain));
            return Ok(());
        }
        let best = usable
            .into_iter()
            .filter(|p| p.version.is_some())
            .max_by(|a, b| self.u.compare(a, b))
            .expect("at least one versioned provider");
        self.select(best.cand, chain, queue);
        Ok(())
    }

    fn run(&mut self, world: &[Dep]) -> Result<(), Outcome> {
        let mut queue: VecDeque<(Dep, Vec<String>)> =
            world.iter().map(|d| (d.clone(), vec!["world".to_string()])).collect();
        loop {
            let mut deferred = Vec::new();
            while let Some((dep, chain)) = queue.pop_front() {
                self.require(dep, chain, &mut queue, &mut deferred)?;
            }
            // Virtual names: fine if something chosen provides them, else provider_priority.
            for (dep, chain) in deferred {
                if self.satisfied(&dep) {
                    continue;
                }
                let providers = &self.u.providers[dep.name.as_str()];
                let best = providers
                    .iter()
                    .filter(|p| {
                        self.u.cands[p.cand].rec.provider_priority.is_some()
                            && self.allowed(p.cand)
                            && self.tag_ok(&dep, p.cand)
                    })
                    .max_by(|a, b| self.u.compare(a, b));
                match best {
                    Some(p) => self.select(p.cand, chain, &mut queue),
                    None => {
                        let names: BTreeSet<&str> = providers.iter().map(|p| self.u.name(p.cand)).collect();
                        return Err(Outcome::Fail(ResolveError::Ambiguous {
                            dep: dep.to_string(),
                            chain: chain_text(&chain),
                            providers: names.into_iter().collect::<Vec<_>>().join(", "),
                        }));
                    }
                }
            }
            if !queue.is_empty() {
                continue;
            }
            // install_if: a package joins once everything it names is installed.
            let mut joined = BTreeMap::new();
            for &i in &self.u.install_if {
                let c = &self.u.cands[i];
                if self.selected.contains_key(c.rec.name.as_str()) || !self.allowed(i) {
                    continue;
                }
                if c.rec.install_if.iter().all(|d| {
                    if d.conflict {
                        !self.satisfied(&Dep { conflict: false, ..d.clone() })
                    } else {
                        self.satisfied(d)
                    }
                }) {
                    let p = Provider { cand: i, version: Some(c.rec.version.clone()) };
                    joined
                        .entry(c.rec.name.as_str())
                        .and_modify(|best: &mut Provider| {
                            if self.u.compare(&p, best) == Ordering::Greater {
                                *best = p.clone();
                            }
                        })
                        .or_insert(p);
                }
            }
            if joined.is_empty() {
                return Ok(());
            }
            for (_, p) in joined {
                let trigger = Dep::format_list(&self.u.cands[p.cand].rec.install_if);
                self.select(p.cand, vec!["world".into(), format!("install_if({trigger})")], &mut queue);
            }
        }
    }
}

/// Resolves `world` against `repos` for `arch`, keeping the versions in `prefer` where
/// they still fit (pass an empty map for a fresh resolution).
pub fn resolve(
    world: &[Dep],
    repos: &[Repo],
    arch: Arch,
    prefer: &BTreeMap<String, Version>,
) -> Result<Resolution, ResolveError> {
    let u = Universe::new(repos, arch, prefer);
    let mut k = Knowledge::default();
    for _ in 0..10_000 {
        let mut attempt = Attempt {
            u: &u,
            k: &k,
            selected: BTreeMap::new(),
            provided: BTreeMap::new(),
            chains: BTreeMap::new(),
            conflicts: Vec::new(),
        };
        match attempt.run(world) {
            Ok(()) => return Ok(order(&u, attempt.selected, attempt.chains)),
            Err(Outcome::Fail(e)) => return Err(e),
            Err(Outcome::Learn(l)) => {
                let what = match &l {
                    Learned::Constraint(n, d) => format!("{n} must satisfy {d}"),
                    Learned::Forbid(d) => format!("{d} must not be installed"),
                };
                if !k.add(l) {
                    return Err(ResolveError::Conflict {
                        detail: format!("{what}, but the requirements keep demanding otherwise"),
                    });
                }
            }
        }
    }
    Err(ResolveError::Conflict { detail: "no solution found after 10000 refinements".into() })
}

/// Install order: dependencies (and install_if triggers) first, depth-first over sorted
/// names in the order each package lists them; cycles broken where they close.
fn order(u: &Universe, selected: BTreeMap<&str, usize>, chains: BTreeMap<usize, Vec<String>>) -> Resolution {
    let providers_of = |dep: &Dep| -> Vec<&str> {
        let mut v: Vec<&str> = selected
            .values()
            .filter(|&&c| {
                let rec = u.cands[c].rec;
                (rec.name == dep.name && dep.version_matches(Some(&rec.version)))
                    || rec
                        .provides
                        .iter()
                        .any(|p| p.name == dep.name && dep.version_matches(p.constraint.as_ref().map(|(_, v)| v)))
            })
            .map(|&c| u.name(c))
            .collect();
        v.sort_unstable();
        v
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    fn visit<'a>(
        name: &'a str,
        u: &Universe<'a>,
        selected: &BTreeMap<&'a str, usize>,
        providers_of: &dyn Fn(&Dep) -> Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<usize>,
    ) {
        if !done.insert(name) {
            return;
        }
        let cand = selected[name];
        let rec = u.cands[cand].rec;
        // install_if triggers are installed before the package they bring in.
        for d in rec.depends.iter().chain(&rec.install_if).filter(|d| !d.conflict) {
            for p in providers_of(d) {
                visit(p, u, selected, providers_of, done, out);
            }
        }
        out.push(cand);
    }
    for &name in selected.keys() {
        visit(name, u, &selected, &providers_of, &mut done, &mut out);
    }
    Resolution {
        packages: out
            .into_iter()
            .map(|c| Chosen {
                record: u.cands[c].rec.clone(),
                repository: u.repos[u.cands[c].repo].to_string(),
                required_by: chains.get(&c).cloned().unwrap_or_default(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apk::index::parse_records;

    /// A tiny index in APKINDEX text form: one record per line, `name version [D:..] [p:..] [i:..] [k:..]`.
    fn repo(spec: &str) -> Vec<IndexRecord> {
        let mut text = String::new();
        for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut parts = line.split(" | ");
            let mut head = parts.next().unwrap().split_whitespace();
            let (name, version) = (head.next().unwrap(), head.next().unwrap());
            text.push_str(&format!("C:Q1tL491cf/hUqLQi7fZ4MhT9Qmi9U=\nP:{name}\nV:{version}\nA:x86_64\nS:1\nI:1\n"));
            for field in parts {
                text.push_str(field);
                text.push('\n');
            }
            text.push('\n');
        }
        parse_records(&text, "test").unwrap()
    }

    fn solve(repos: &[(&str, &[IndexRecord])], world: &str) -> Result<Vec<String>, ResolveError> {
        let repos: Vec<Repo> = repos.iter().map(|(n, r)| Repo { name: n, records: r }).collect();
        let world = Dep::parse_list(world).unwrap();
        resolve(&world, &repos, Arch::X86_64, &BTreeMap::new())
            .map(|r| r.packages.into_iter().map(|c| format!("{}-{}", c.record.name, c.record.version)).collect())
    }

    #[test]
    fn highest_version_and_dependency_order() {
        let main = repo("a 1.0 | D:b\na 2.0 | D:b>=2\nb 1.0\nb 2.0\nb 3.0 | D:c\nc 1");
        assert_eq!(solve(&[("main", &main)], "a").unwrap(), ["c-1", "b-3.0", "a-2.0"]);
        assert_eq!(solve(&[("main", &main)], "a<2 b<3").unwrap(), ["b-2.0", "a-1.0"]);
    }

    #[test]
    fn learns_from_later_constraints() {
        // x pulls the newest lib, y pins lib=1.0: the solver must go back and pick 1.0.
        let main = repo("x 1 | D:lib\ny 1 | D:lib=1.0\nlib 1.0\nlib 2.0");
        assert_eq!(solve(&[("main", &main)], "x y").unwrap(), ["lib-1.0", "x-1", "y-1"]);
    }

    #[test]
    fn so_and_cmd_providers() {
        let main = repo("app 1 | D:so:libfoo.so.1 cmd:sh\nlibfoo 1.2 | p:so:libfoo.so.1=1.2\nbusybox 1.36 | p:cmd:sh=1.36 /bin/sh\ndash 0.5 | p:cmd:sh=0.5");
        assert_eq!(solve(&[("main", &main)], "app").unwrap(), ["libfoo-1.2", "busybox-1.36", "app-1"]);
    }

    #[test]
    fn virtual_names_need_priority_or_an_existing_provider() {
        let main = repo("app 1 | D:/bin/sh\nbusybox-binsh 1 | p:/bin/sh\ndash-binsh 1 | p:/bin/sh");
        let e = solve(&[("main", &main)], "app").unwrap_err().to_string();
        assert!(
            e.contains("/bin/sh is virtual") && e.contains("busybox-binsh, dash-binsh") && e.contains("world -> app-1"),
            "{e}"
        );
        assert_eq!(solve(&[("main", &main)], "app dash-binsh").unwrap(), ["dash-binsh-1", "app-1"]);
        let main = repo("app 1 | D:/bin/sh\nbusybox-binsh 1 | p:/bin/sh | k:100\ndash-binsh 1 | p:/bin/sh | k:50");
        assert_eq!(solve(&[("main", &main)], "app").unwrap(), ["busybox-binsh-1", "app-1"]);
    }

    #[test]
    fn provider_priority_breaks_ties_between_versioned_providers() {
        let main = repo("a 1 | p:cmd:x=1 | k:10\nb 1 | p:cmd:x=1 | k:20");
        assert_eq!(solve(&[("main", &main)], "cmd:x").unwrap(), ["b-1"]);
    }

    #[test]
    fn conflicts_are_respected_or_reported() {
        let main = repo("a 1 | D:!b\nb 1\nc 1 | D:d\nd 2\nd 1 | D:!a");
        assert_eq!(solve(&[("main", &main)], "a c").unwrap(), ["a-1", "d-2", "c-1"]);
        let e = solve(&[("main", &main)], "a b").unwrap_err().to_string();
        assert!(e.contains('b'), "{e}");
    }

    #[test]
    fn install_if_joins_when_its_triggers_are_installed() {
        let main = repo("docker 1\nopenrc 1\ndocker-openrc 1 | i:docker openrc\nfoo-doc 1 | i:foo docs");
        assert_eq!(solve(&[("main", &main)], "docker openrc").unwrap(), ["docker-1", "openrc-1", "docker-openrc-1"]);
        assert_eq!(solve(&[("main", &main)], "docker").unwrap(), ["docker-1"]);
    }

    #[test]
    fn repositories_in_order_and_tags() {
        let main = repo("a 1.0");
        let community = repo("a 1.0\nb 1");
        let edge = repo("a 2.0");
        // Same version in two repositories: the earlier wins.
        let r: Vec<Repo> = vec![Repo { name: "main", records: &main }, Repo { name: "community", records: &community }];
        let res = resolve(&Dep::parse_list("a b").unwrap(), &r, Arch::X86_64, &BTreeMap::new()).unwrap();
        assert_eq!(res.packages.iter().find(|c| c.record.name == "a").unwrap().repository, "main");
        // Higher version wins across repositories, unless pinned by tag.
        assert_eq!(solve(&[("main", &main), ("edge", &edge)], "a").unwrap(), ["a-2.0"]);
        assert_eq!(solve(&[("main", &main), ("edge", &edge)], "a@main").unwrap(), ["a-1.0"]);
    }

    #[test]
    fn errors_name_the_chain() {
        let main = repo("docker-engine 1 | D:containerd\ncontainerd 1 | D:runc>=2\nrunc 1.1");
        let e = solve(&[("main", &main)], "docker-engine").unwrap_err().to_string();
        assert!(
            e.contains("runc>=2")
                && e.contains("world -> docker-engine-1 -> containerd-1")
                && e.contains("runc-1.1 (main): version does not match"),
            "{e}"
        );
        let e = solve(&[("main", &main)], "nosuch").unwrap_err().to_string();
        assert!(e.contains("no package provides nosuch") && e.contains("world"), "{e}");
    }

    #[test]
    fn preferred_versions_are_kept_while_they_fit() {
        let main = repo("a 1 | D:b\na 2 | D:b\nb 1\nb 2");
        let repos = [Repo { name: "main", records: &main }];
        let prefer: BTreeMap<String, Version> =
            [("a".to_string(), Version::parse("1").unwrap()), ("b".to_string(), Version::parse("1").unwrap())].into();
        let res = resolve(&Dep::parse_list("a").unwrap(), &repos, Arch::X86_64, &prefer).unwrap();
        let got: Vec<String> = res.packages.iter().map(|c| format!("{}-{}", c.record.name, c.record.version)).collect();
        assert_eq!(got, ["b-1", "a-1"]);
        // A preference that no longer fits yields to the constraint.
        let res = resolve(&Dep::parse_list("a b>1").unwrap(), &repos, Arch::X86_64, &prefer).unwrap();
        let got: Vec<String> = res.packages.iter().map(|c| format!("{}-{}", c.record.name, c.record.version)).collect();
        assert_eq!(got, ["b-2", "a-1"]);
    }

    #[test]
    fn deterministic() {
        let main = repo("a 1 | D:so:x cmd:y\np 1 | p:so:x=1\nq 1 | p:so:x=1\nr 1 | p:cmd:y=2\ns 1 | p:cmd:y=2");
        let first = solve(&[("main", &main)], "a").unwrap();
        for _ in 0..5 {
            assert_eq!(solve(&[("main", &main)], "a").unwrap(), first);
        }
        assert_eq!(first, ["p-1", "r-1", "a-1"]);
    }
}
