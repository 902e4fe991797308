#!/usr/bin/env python3
"""Checks GitHub Actions workflows against the repository they run in (GitHub runs them;
here their shape is checked): each file is YAML with `on` and `jobs`; each job runs on a
runner with steps, or calls a workflow of this repository that declares `workflow_call` with
the inputs it is given; `needs` name jobs that exist; actions are pinned to a ref; every
`make TARGET` in a `run` names a target of the Makefile, every repository path a `run` names
(.ci/, tests/, profiles/, ...) exists, every `cargo test --test NAME` names a test target of
builder/Cargo.toml, a matrix `profile` names a profile in profiles/, and every `inputs.NAME`
is declared.

usage: check.py ROOT WORKFLOW.yml...   (prints each problem; exits 1 if there is one)
"""
import os
import re
import shlex
import sys

import yaml

PATH_PREFIXES = (".ci/", "tests/", "profiles/", "overlay/", "builder/", ".github/")


def make_targets(root):
    targets = set()
    for line in open(os.path.join(root, "Makefile")):
        m = re.match(r"^([A-Za-z0-9_./-]+(?:\s+[A-Za-z0-9_./-]+)*)\s*:(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def cargo_tests(root):
    text = open(os.path.join(root, "builder/Cargo.toml")).read()
    return set(re.findall(r'\[\[test\]\]\s*\nname\s*=\s*"([^"]+)"', text))


def triggers(workflow):
    """A workflow's `on` as a mapping of trigger to its settings (None when it has none), in
    whichever form it is written: a name, a list of names or a mapping. (YAML 1.1 reads a bare
    `on` as true.)"""
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on if isinstance(on, dict) else {}


def commands(script):
    """Each simple command of a `run` script, as a list of words."""
    script = re.sub(r"\\\n", " ", script)
    script = re.sub(r"\$\{\{.*?\}\}", "$EXPRESSION", script)  # GitHub fills these in before the shell runs
    for line in script.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for part in re.split(r"&&|\|\||;|\||\bthen\b|\bdo\b|\belse\b", line):
            try:
                words = shlex.split(part)
            except ValueError:
                words = part.split()
            if words:
                yield words


def check_run(script, where, root, targets, tests, problems):
    for words in commands(script):
        for i, word in enumerate(words):
            if word == "make":
                args = words[i + 1 :]
                if any(a.startswith(("-C", "-f", "--directory", "--file")) for a in args):
                    continue  # another directory's or file's targets
                for arg in args:
                    if arg.startswith("-") or "=" in arg:
                        continue
                    if arg not in targets:
                        problems.append(f"{where}: `make {arg}`: the Makefile has no target {arg!r}")
            if word == "--test" and i + 1 < len(words) and words[i - 1 : i] != ["--"]:
                name = words[i + 1]
                if "cargo" in words and "$" not in name and name not in tests:
                    problems.append(f"{where}: `--test {name}`: builder/Cargo.toml has no test target {name!r}")
            path = word[2:] if word.startswith("./") else word
            path = path.split("=", 1)[1] if path.startswith("--") and "=" in path else path
            if path.startswith(PATH_PREFIXES) and not re.search(r"[$*?{}]", path):
                if not os.path.exists(os.path.join(root, path)):
                    problems.append(f"{where}: {path} does not exist in the repository")


def check_workflow(path, root, targets, tests):
    problems = []
    name = os.path.relpath(path, root)
    try:
        w = yaml.safe_load(open(path))
    except yaml.YAMLError as e:
        return [f"{name}: not YAML: {e}"]
    if not isinstance(w, dict):
        return [f"{name}: not a mapping"]
    on = triggers(w)
    if not on:
        problems.append(f"{name}: no `on` triggers")
    jobs = w.get("jobs") or {}
    if not jobs:
        problems.append(f"{name}: no jobs")
    declared = set()
    for trigger in ("workflow_call", "workflow_dispatch"):
        declared.update((on.get(trigger) or {}).get("inputs") or {})
    for used in sorted(set(re.findall(r"\binputs\.([A-Za-z0-9_-]+)", open(path).read()))):
        if used not in declared:
            problems.append(f"{name}: uses inputs.{used}, which no workflow_call or workflow_dispatch input declares")
    profiles = {f[: -len(".toml")] for f in os.listdir(os.path.join(root, "profiles")) if f.endswith(".toml")}
    for job_id, job in jobs.items():
        where = f"{name}: job {job_id}"
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            if need not in jobs:
                problems.append(f"{where}: needs {need!r}, which is not a job of this workflow")
        matrix = (job.get("strategy") or {}).get("matrix") or {}
        for profile in matrix.get("profile", []) if isinstance(matrix, dict) else []:
            if profile not in profiles:
                problems.append(f"{where}: matrix profile {profile!r} is not in profiles/")
        if "uses" in job:
            called = job["uses"]
            if called.startswith("./"):
                target = os.path.join(root, called[2:])
                if not os.path.isfile(target):
                    problems.append(f"{where}: calls {called}, which does not exist")
                    continue
                try:
                    callee = yaml.safe_load(open(target)) or {}
                except yaml.YAMLError as e:
                    problems.append(f"{where}: calls {called}, which is not YAML: {e}")
                    continue
                callee_on = triggers(callee)
                if "workflow_call" not in callee_on:
                    problems.append(f"{where}: calls {called}, which has no workflow_call trigger")
                    continue
                inputs = (callee_on["workflow_call"] or {}).get("inputs") or {}
                for key in job.get("with") or {}:
                    if key not in inputs:
                        problems.append(f"{where}: passes input {key!r}, which {called} does not declare")
            continue
        if "runs-on" not in job:
            problems.append(f"{where}: no runs-on")
        steps = job.get("steps") or []
        if not steps:
            problems.append(f"{where}: no steps")
        for n, step in enumerate(steps, 1):
            at = f"{where}, step {n} ({step.get('name') or step.get('uses') or 'run'})"
            if ("uses" in step) == ("run" in step):
                problems.append(f"{at}: a step has either `uses` or `run`")
            uses = step.get("uses")
            if uses and not uses.startswith("./") and not re.fullmatch(r"[\w.-]+/[\w./-]+@[\w.-]+", uses):
                problems.append(f"{at}: action {uses!r} is not pinned to a ref (owner/repo@ref)")
            if "run" in step:
                check_run(step["run"], at, root, targets, tests, problems)
    return problems


def main():
    root, files = sys.argv[1], sys.argv[2:]
    targets, tests = make_targets(root), cargo_tests(root)
    problems = [p for f in files for p in check_workflow(f, root, targets, tests)]
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
