#!/usr/bin/env python3
"""`make bench`: hyve measured side by side with the classic tools, on this machine, now.

Uses the release binary and the test mirror (a TEST FIXTURE built from Debian's binaries,
`make mirror`). `minimal` is built and booted in both root modes: "squashfs" (its default)
and "initramfs" (a profile extending it). Every figure is the median of BENCH_RUNS runs
(default 5; boots: BENCH_BOOTS, default 1). Prints a table and writes
target/bench/results.json. It never fails on a time: the figures are for reading, and the
README quotes a real run.

  warm build      `hyve build`, lock present, cache full (file:// mirror), per mode; in
                  squashfs mode the root image's block cache holds the last build's blocks
  uncached        squashfs mode with the block cache emptied before each build: every block
                  of the root image compressed again (packages still from the cache)
  baseline        the very same final tree packed by the raw tool: `find . | sort | cpio -o -H
                  newc | zstd -12 -T0` (the initramfs) and `mksquashfs -comp zstd
                  -Xcompression-level 6` on every CPU (the root image), run right after each
                  warm (and uncached) build: hyve/baseline is the median of those pairs' ratios
                  (their range beside it, every pair in results.json)
  classic         the same packages (the lock's, from the cache) unpacked by GNU tar, one after
                  another in the lock's order, then that tree packed by mksquashfs as above: the
                  job done the classic way, without any of hyve's checks (no signature, pin, Q1,
                  datahash or SHA-1 is verified), overlay, kernel, initrd or disk image
  cold build      empty cache, packages fetched from a loopback HTTP mirror (squashfs mode)
  peak RSS        of each hyve build (GNU time's maximum resident set size)
  sizes           kernel, initrd.img, root.squashfs, disk.img
  boots           under QEMU (TCG here) with a fresh data disk made by `hyve disk create
                  --docker-certs`, then again with the same disk (the second boot): seconds
                  from the VMM's start to userspace ("HYVE-BOOT-OK") and to the Docker API
                  ("dockerd ... ready"), the guest's memory in use after boot (MemTotal -
                  MemAvailable, and tmpfs, from its "memory after boot" line), and the
                  console timeline: seconds from the VMM's start to each `hyve:` line
  aarch64 boots   `minimal` (squashfs) built for aarch64 and booted the same way, under
                  QEMU's aarch64 system emulator (TCG on an x86_64 host)
  DAMON           where the kernel's DAMON pages out idle page cache (proactive reclaim, as
                  on some VM hosts), how much it paged out during the run: the warm builds'
                  inputs among it are read from disk again
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HYVE = ROOT / "target/release/hyve"
MIRROR = ROOT / "target/test-mirror"
KEY = ROOT / "tests/keys/hyve-test-mirror.rsa.pub"
PROFILE = ROOT / "profiles/minimal.toml"
OUT = ROOT / "target/bench"
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
BOOTS = int(os.environ.get("BENCH_BOOTS", "1"))
# hyve's zstd level for an initramfs (output::compress) and for the root image (output::squashfs).
INITRD_ZSTD_LEVEL = 12
ROOT_ZSTD_LEVEL = 6


def damon_pageout():
    """Bytes the machine's DAMON `pageout` schemes have paged out so far, or None without one
    running or without root (DAMON's sysfs files are root's). Such proactive reclaim (a VM's
    host may set it up) takes page cache that stayed idle for a while, so warm builds may
    read some of their inputs from disk again."""
    applied = None
    for kdamond in Path("/sys/kernel/mm/damon/admin/kdamonds").glob("[0-9]*"):
        try:
            if (kdamond / "state").read_text().strip() != "on":
                continue
            (kdamond / "state").write_text("update_schemes_stats")
        except OSError:
            continue  # not root: no fresh figures
        for scheme in kdamond.glob("contexts/*/schemes/[0-9]*"):
            try:
                if (scheme / "action").read_text().strip() == "pageout":
                    applied = (applied or 0) + int((scheme / "stats/sz_applied").read_text())
            except (OSError, ValueError):
                continue
    return applied


def need(path, hint):
    if not Path(path).exists():
        sys.exit(f"bench: {path} is missing; {hint}")


def run(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"bench: {cmd} failed:\n{p.stderr[-2000:]}")
    return p.stdout


def timed(cmd, cwd=None, shell=False):
    """Wall seconds and peak RSS (KiB) of one command, via GNU time. Dirty pages are written out
    first (not timed): the kernel's writeback of what earlier steps wrote (trees, images) would
    otherwise take a share of the two CPUs during whichever run it happens to fall in."""
    os.sync()
    fmt = "BENCH %e %M"
    argv = ["/usr/bin/time", "-f", fmt] + (["sh", "-c", cmd] if shell else cmd)
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, argv))} failed:\n{p.stderr[-2000:]}")
    line = [l for l in p.stderr.splitlines() if l.startswith("BENCH ")][-1]
    _, secs, rss = line.split()
    return float(secs), int(rss)


def build(work, profile, mirror_url, cache, lock, out, arch="x86_64"):
    return timed([
        str(HYVE), "build", "--profile", str(profile), "--arch", arch, "--mirror", mirror_url,
        "--key", str(KEY), "--lockfile", str(lock), "--cache-dir", str(cache), "--out", str(out),
    ], cwd=work)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def classic_build(work, cache, lock):
    """Seconds to unpack the lock's packages from the cache with GNU tar (in the lock's order)
    and pack the tree with mksquashfs, as `baseline` does: the classic pipeline."""
    packages = tomllib.loads(lock.read_text())["arch"]["x86_64"]["packages"]
    tree, image = work / "classic-tree", work / "classic.squashfs"
    tree.mkdir()
    os.sync()
    start = time.monotonic()
    for p in packages:
        run(["tar", "-xzf", str(cache / "blobs/sha256" / p["sha256"]), "-C", str(tree),
             "--warning=no-unknown-keyword", "--no-same-owner"])
    run(["mksquashfs", str(tree), str(image), "-noappend", "-quiet", "-no-progress", "-comp", "zstd",
         "-Xcompression-level", str(ROOT_ZSTD_LEVEL), "-processors", str(os.cpu_count())])
    took = time.monotonic() - start
    shutil.rmtree(tree)
    image.unlink()
    return took


def boot(out, disk, log):
    """Boots `out` with `disk` until the guest reports its memory after boot (or 900 s):
    the console timeline [(seconds since the VMM started, line)] and the figures from it."""
    start = time.monotonic()
    timeline = []
    p = subprocess.Popen([str(HYVE), "run", str(out), "--memory", "2048", "--disk", str(disk), "--timeout", "900"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    reader = threading.Thread(target=lambda: [timeline.append((time.monotonic() - start, l.decode(errors="replace")))
                                               for l in p.stdout], daemon=True)
    reader.start()
    try:
        while time.monotonic() - start < 900 and p.poll() is None:
            if any("hyve: memory after boot:" in l for _, l in list(timeline)):
                break
            time.sleep(0.2)
    finally:
        # hyve run asks the guest to power off on SIGTERM: the data disk is unmounted cleanly.
        p.terminate()
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    reader.join(timeout=10)
    log.write_text("".join(f"{t:7.2f}  {l}" for t, l in timeline))
    lines = [(round(t, 2), l.strip()[l.find("hyve: "):]) for t, l in timeline if "hyve: " in l]
    first = lambda text: next((t for t, l in lines if text in l), None)
    memory = next((l for _, l in lines if "memory after boot:" in l), "")
    # What hyve run chose ("hyve: booting DIR (ARCH, ACCEL accel)"): auto takes KVM only when it works.
    accel = next((m.group(1) for _, l in lines if (m := re.search(r", (\w+) accel\)", l))), None)
    m = re.search(r"(\d+) MiB in use of (\d+) MiB, tmpfs (\d+) MiB", memory)
    return {
        "userspace_s": first("HYVE-BOOT-OK"),
        "docker_api_s": first(" ready: "),
        "memory_in_use_mib": int(m.group(1)) if m else None,
        "memory_total_mib": int(m.group(2)) if m else None,
        "tmpfs_mib": int(m.group(3)) if m else None,
        "accel": accel,
        "timeline": lines,
    }


def boot_pairs(out, work, label):
    """BOOTS fresh data disks, each booted twice with `out`: the medians of the first and of
    the second boots, and the first one's console timeline."""
    runs = {"first": [], "second": []}
    for i in range(BOOTS):
        disk = work / f"data-{label}-{i}.img"
        run([str(HYVE), "disk", "create", str(disk), "--size", "4G", "--docker-certs", str(work / f"certs-{label}-{i}")])
        for which in runs:
            runs[which].append(boot(out, disk, work / f"boot-{label}-{which}-{i}.log"))
        disk.unlink()
    summaries = {}
    for which, boots in runs.items():
        pick = lambda k: [b[k] for b in boots if b[k] is not None]
        summary = {k: statistics.median(pick(k)) if pick(k) else None
                   for k in ["userspace_s", "docker_api_s", "memory_in_use_mib", "tmpfs_mib"]}
        summary["timeline"] = boots[0]["timeline"]
        summary["accel"] = boots[0]["accel"]
        summaries[f"{which}_boot"] = summary
    return summaries


def main():
    need(HYVE, "run `make build`")
    need(MIRROR / "v3.24/main/x86_64/APKINDEX.tar.gz", "run `make mirror`")
    need("/usr/bin/time", "apt-get install time")
    for tool, pkg in [("cpio", "cpio"), ("zstd", "zstd"), ("mksquashfs", "squashfs-tools"),
                      ("unsquashfs", "squashfs-tools"), ("qemu-system-x86_64", "qemu-system-x86"),
                      ("qemu-system-aarch64", "qemu-system-arm")]:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing; apt-get install {pkg}")
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hyve-bench-", dir=OUT))
    file_url = f"file://{MIRROR}"
    cache, lock = work / "cache", work / "minimal.lock"
    ramfs_profile = work / "minimal-initramfs.toml"
    ramfs_profile.write_text(f'extends = "{PROFILE}"\n[output]\nroot = "initramfs"\n')
    modes = {"squashfs": PROFILE, "initramfs": ramfs_profile}
    results = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "runs": RUNS, "modes": {}}
    paged_out_before = damon_pageout()
    med = statistics.median

    # Warm: fill cache and lock once, and build each mode once for the trees the raw tools pack.
    build(work, PROFILE, file_url, cache, lock, work / "warmup")
    outs = {m: work / f"out-{m}" for m in modes}
    for mode, profile in modes.items():
        build(work, profile, file_url, cache, lock, outs[mode])
    tree = work / "tree"
    tree.mkdir()
    run(f"zstd -dc {outs['initramfs']}/initrd.img | cpio -idm --quiet", shell=True, cwd=tree)
    tree_bytes = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    squash_tree = work / "squash-tree"
    run(["unsquashfs", "-q", "-n", "-d", str(squash_tree), str(outs["squashfs"] / "root.squashfs")])
    image = work / "baseline.squashfs"
    # The same final tree, packed by the raw tools.
    tools = {
        "initramfs": lambda: timed(f"find . | LC_ALL=C sort | cpio -o -H newc --quiet | zstd -{INITRD_ZSTD_LEVEL} -T0 -q >/dev/null",
                                   cwd=tree, shell=True),
        "squashfs": lambda: timed(["mksquashfs", str(squash_tree), str(image), "-noappend", "-quiet", "-no-progress",
                                   "-comp", "zstd", "-Xcompression-level", str(ROOT_ZSTD_LEVEL),
                                   "-processors", str(os.cpu_count())]),
    }
    # Each warm build right before its raw tool, so that the ratio compares runs a moment apart
    # (this machine's speed drifts between runs by more than the difference measured); the
    # ratio is the median of each pair's.
    for mode, profile in modes.items():
        warm, baseline = [], []
        for _ in range(RUNS):
            warm.append(build(work, profile, file_url, cache, lock, outs[mode]))
            baseline.append(tools[mode]())
        sizes = {f: (outs[mode] / f).stat().st_size
                 for f in ["kernel", "initrd.img", "root.squashfs", "disk.img"] if (outs[mode] / f).exists()}
        results["modes"][mode] = {"warm_build_s": med([w[0] for w in warm]),
                                  "warm_peak_rss_kib": max(w[1] for w in warm), "sizes": sizes,
                                  "baseline_s": med([b[0] for b in baseline]),
                                  "ratio_warm_vs_baseline": med([w[0] / b[0] for w, b in zip(warm, baseline)]),
                                  "pairs_s": [[w[0], b[0]] for w, b in zip(warm, baseline)]}
        if mode == "squashfs":
            results["modes"][mode]["baseline_size"] = image.stat().st_size
            image.unlink()
            uncached, baseline = [], []
            for _ in range(RUNS):
                shutil.rmtree(cache / "root-blocks", ignore_errors=True)
                uncached.append(build(work, profile, file_url, cache, lock, outs[mode]))
                baseline.append(tools[mode]())
            image.unlink()
            results["modes"][mode]["uncached_build_s"] = med([u[0] for u in uncached])
            results["modes"][mode]["ratio_uncached_vs_baseline"] = med([u[0] / b[0] for u, b in zip(uncached, baseline)])
            results["modes"][mode]["uncached_pairs_s"] = [[u[0], b[0]] for u, b in zip(uncached, baseline)]
    classic = [classic_build(work, cache, lock) for _ in range(RUNS)]
    results["modes"]["squashfs"]["classic_s"] = med(classic)
    results["modes"]["squashfs"]["ratio_warm_vs_classic"] = results["modes"]["squashfs"]["warm_build_s"] / med(classic)

    # Cold: empty cache each time, packages over loopback HTTP.
    server, http_url = serve(MIRROR)
    cold = []
    for i in range(RUNS):
        c = work / f"cold-cache-{i}"
        cold.append(build(work, PROFILE, http_url, c, lock, work / "cold-out"))
        shutil.rmtree(c)
    server.shutdown()
    results.update({"cold_build_s": med([c[0] for c in cold]), "cold_peak_rss_kib": max(c[1] for c in cold),
                    "tree_bytes": tree_bytes})

    # Boots: a fresh data disk, then the same disk again; then the same for aarch64.
    for mode in modes:
        results["modes"][mode].update(boot_pairs(outs[mode], work, mode))
    results["boot_accel"] = results["modes"]["squashfs"]["first_boot"]["accel"]
    out_arm = work / "out-aarch64"
    build(work, PROFILE, file_url, cache, lock, out_arm, arch="aarch64")
    results["aarch64_squashfs"] = boot_pairs(out_arm, work, "aarch64")
    paged_out = damon_pageout()
    # (A kdamond started again during the run counts from zero: then nothing is said.)
    if paged_out is not None and paged_out_before is not None and paged_out >= paged_out_before:
        results["machine"]["damon_paged_out_bytes"] = paged_out - paged_out_before
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    mib = lambda n: f"{n / 2**20:.1f} MiB"
    secs = lambda s: f"{s:.1f} s" if s is not None else "n/a"
    spread = lambda pairs: "pairs {:.2f}-{:.2f}".format(*(f(a / b for a, b in pairs) for f in (min, max)))
    rows = []
    boot_rows = lambda label, r: [
        row for which in ["first", "second"] for b in [r[f"{which}_boot"]] for row in [
            (f"{label}: {which} boot to userspace", secs(b["userspace_s"]), ""),
            (f"{label}: {which} boot to Docker API", secs(b["docker_api_s"]),
             f"memory in use {b['memory_in_use_mib']} MiB, tmpfs {b['tmpfs_mib']} MiB" if b["memory_in_use_mib"] is not None else ""),
        ]]
    for mode, r in results["modes"].items():
        tool = "find|sort|cpio|zstd" if mode == "initramfs" else "mksquashfs"
        rows += [
            (f"{mode}: warm build of minimal", f"{r['warm_build_s']:.2f} s", f"peak RSS {mib(r['warm_peak_rss_kib'] * 1024)}"),
            (f"{mode}: {tool} of the same tree", f"{r['baseline_s']:.2f} s",
             f"hyve/baseline {r['ratio_warm_vs_baseline']:.2f} ({spread(r['pairs_s'])})"),
        ]
        if "uncached_build_s" in r:
            rows.append((f"{mode}: warm build, block cache emptied", f"{r['uncached_build_s']:.2f} s",
                         f"hyve/baseline {r['ratio_uncached_vs_baseline']:.2f} ({spread(r['uncached_pairs_s'])}; every block compressed again)"))
        rows += boot_rows(mode, r)
        rows += [(f"{mode}: size of {k}", mib(v), "") for k, v in r["sizes"].items()]
    sq = results["modes"]["squashfs"]
    rows += [
        ("squashfs: tar -x of each package + mksquashfs", f"{sq['classic_s']:.2f} s",
         f"hyve/classic {sq['ratio_warm_vs_classic']:.2f} (classic checks nothing)"),
        ("squashfs: mksquashfs image of the same tree", mib(results["modes"]["squashfs"]["baseline_size"]), ""),
        ("cold build (squashfs, empty cache, loopback HTTP)", secs(results["cold_build_s"]),
         f"peak RSS {mib(results['cold_peak_rss_kib'] * 1024)}"),
        ("uncompressed tree", mib(tree_bytes), ""),
    ]
    arm = results["aarch64_squashfs"]
    rows += boot_rows(f"squashfs, aarch64 ({arm['first_boot']['accel']})", arm)
    width = max(len(r[0]) for r in rows)
    print(f"hyve bench — {os.cpu_count()} CPUs, median of {RUNS} builds and {BOOTS} boot(s) per mode, QEMU accel {results['boot_accel']}")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>10}  {note}")
    if "damon_paged_out_bytes" in results["machine"]:
        print(f"note: this machine's DAMON paged out {mib(results['machine']['damon_paged_out_bytes'])} of idle page "
              "cache during the run: warm builds may have read some of their inputs from disk again (README, Performance)")
    timelines = {mode: results["modes"][mode]["first_boot"] for mode in modes}
    timelines["squashfs, aarch64"] = arm["first_boot"]
    for label, b in timelines.items():
        print(f"console timeline, {label}, first boot (seconds since the VMM started):")
        for t, line in b["timeline"]:
            print(f"  {t:7.2f}  {line}")
    print(f"results: {OUT / 'results.json'}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
