#!/usr/bin/env python3
"""`make bench`: hyve measured side by side with the classic pipeline, on this machine, now.

Uses the release binary and the test mirror (a TEST FIXTURE built from Debian's binaries,
`make mirror`). Every figure is the median of BENCH_RUNS runs (default 3; the zstd -19
baseline: BENCH_ZSTD19_RUNS, default 1; boots: BENCH_BOOTS, default 1). Prints a table and writes target/bench/results.json. It never fails on a time:
the figures are for reading, and the README quotes a real run.

  warm build      `hyve build --profile minimal`, lock present, cache full (file:// mirror)
  baseline        the very same final tree packed by `find . | sort | cpio -o -H newc | gzip -9`,
                  and by `... | zstd -19 -T0` (minimal's initrd is zstd)
  cold build      empty cache, packages fetched from a loopback HTTP mirror
  peak RSS        of each hyve build (GNU time's maximum resident set size)
  sizes           kernel, initrd.img, disk.img
  boot to API     QEMU (TCG here) start to the guest's "dockerd ... ready" console line
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HYVE = ROOT / "target/release/hyve"
MIRROR = ROOT / "target/test-mirror"
KEY = ROOT / "tests/keys/hyve-test-mirror.rsa.pub"
PROFILE = ROOT / "profiles/minimal.toml"
OUT = ROOT / "target/bench"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
# zstd -19 of a 300 MB tree takes minutes on two cores: one run unless asked.
ZSTD19_RUNS = int(os.environ.get("BENCH_ZSTD19_RUNS", "1"))
BOOTS = int(os.environ.get("BENCH_BOOTS", "1"))


def need(path, hint):
    if not Path(path).exists():
        sys.exit(f"bench: {path} is missing; {hint}")


def timed(cmd, cwd=None, shell=False):
    """Wall seconds and peak RSS (KiB) of one command, via GNU time."""
    fmt = "BENCH %e %M"
    argv = ["/usr/bin/time", "-f", fmt] + (["sh", "-c", cmd] if shell else cmd)
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, argv))} failed:\n{p.stderr[-2000:]}")
    line = [l for l in p.stderr.splitlines() if l.startswith("BENCH ")][-1]
    _, secs, rss = line.split()
    return float(secs), int(rss)


def build(work, mirror_url, cache, lock, out):
    return timed([
        str(HYVE), "build", "--profile", str(PROFILE), "--arch", "x86_64", "--mirror", mirror_url,
        "--key", str(KEY), "--lockfile", str(lock), "--cache-dir", str(cache), "--out", str(out),
    ], cwd=work)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def boot_to_api(out, log):
    """Seconds from `hyve run` to the guest's `dockerd ... ready` line."""
    start = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.Popen([str(HYVE), "run", str(out), "--memory", "2048", "--timeout", "900"],
                             stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    try:
        while time.monotonic() - start < 900:
            text = Path(log).read_text(errors="replace")
            if "hyve: dockerd " in text and " ready: " in text:
                return time.monotonic() - start
            if p.poll() is not None:
                break
            time.sleep(0.2)
        return None
    finally:
        p.kill()
        p.wait()


def main():
    need(HYVE, "run `make build`")
    need(MIRROR / "v3.24/main/x86_64/APKINDEX.tar.gz", "run `make mirror`")
    need("/usr/bin/time", "apt-get install time")
    for tool in ["cpio", "gzip", "zstd", "qemu-system-x86_64"]:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing; apt-get install {tool if tool != 'qemu-system-x86_64' else 'qemu-system-x86'}")
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hyve-bench-", dir=OUT))
    file_url = f"file://{MIRROR}"
    cache, lock = work / "cache", work / "minimal.lock"
    results = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "runs": RUNS}

    # Warm: fill cache and lock once, then measure.
    build(work, file_url, cache, lock, work / "out")
    warm = [build(work, file_url, cache, lock, work / "out") for _ in range(RUNS)]
    out = work / "out"

    # The same final tree, packed the classic way.
    tree = work / "tree"
    tree.mkdir()
    subprocess.run(f"zstd -dc {out}/initrd.img | cpio -idm --quiet", shell=True, cwd=tree, check=True)
    gz = [timed("find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9 >/dev/null", cwd=tree, shell=True)
          for _ in range(RUNS)]
    zst = [timed("find . | LC_ALL=C sort | cpio -o -H newc --quiet | zstd -19 -T0 -q >/dev/null", cwd=tree, shell=True)
           for _ in range(ZSTD19_RUNS)]

    # Cold: empty cache each time, packages over loopback HTTP.
    server, http_url = serve(MIRROR)
    cold = []
    for i in range(RUNS):
        c = work / f"cold-cache-{i}"
        cold.append(build(work, http_url, c, lock, work / "out"))
        shutil.rmtree(c)
    server.shutdown()

    boots = [boot_to_api(out, work / f"boot-{i}.log") for i in range(BOOTS)]
    boots = [b for b in boots if b is not None]

    med = lambda xs: statistics.median(xs)
    warm_s, warm_rss = med([w[0] for w in warm]), max(w[1] for w in warm)
    cold_s, cold_rss = med([c[0] for c in cold]), max(c[1] for c in cold)
    gz_s, zst_s = med([g[0] for g in gz]), med([z[0] for z in zst])
    sizes = {f: (out / f).stat().st_size for f in ["kernel", "initrd.img", "disk.img"] if (out / f).exists()}
    tree_bytes = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    results.update({
        "warm_build_s": warm_s, "warm_peak_rss_kib": warm_rss,
        "cold_build_s": cold_s, "cold_peak_rss_kib": cold_rss,
        "baseline_cpio_gzip9_s": gz_s, "baseline_cpio_zstd19_s": zst_s,
        "ratio_warm_vs_gzip9": warm_s / gz_s, "ratio_warm_vs_zstd19": warm_s / zst_s,
        "ratio_cold_vs_warm": cold_s / warm_s,
        "tree_bytes": tree_bytes, "sizes": sizes,
        "boot_to_docker_api_s": med(boots) if boots else None, "boot_accel": "tcg" if not os.access("/dev/kvm", os.W_OK) else "auto",
    })
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    mib = lambda n: f"{n / 2**20:.1f} MiB"
    rows = [
        ("warm build of minimal (hyve, zstd-12 initrd + disk.img)", f"{warm_s:.2f} s", f"peak RSS {mib(warm_rss * 1024)}"),
        ("baseline: find|sort|cpio|gzip -9 of the same tree", f"{gz_s:.2f} s", f"hyve/baseline {warm_s / gz_s:.2f}"),
        ("baseline: find|sort|cpio|zstd -19 -T0 of the same tree", f"{zst_s:.2f} s", f"hyve/baseline {warm_s / zst_s:.2f}"),
        ("cold build (empty cache, loopback HTTP)", f"{cold_s:.2f} s", f"cold/warm {cold_s / warm_s:.2f}, peak RSS {mib(cold_rss * 1024)}"),
        ("boot to Docker API (QEMU)", f"{med(boots):.1f} s" if boots else "n/a", f"median of {len(boots)}"),
    ] + [(f"size: {k}", mib(v), "") for k, v in sizes.items()] + [("uncompressed tree", mib(tree_bytes), "")]
    width = max(len(r[0]) for r in rows)
    print(f"hyve bench — {os.cpu_count()} CPUs, median of {RUNS} runs")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>10}  {note}")
    print(f"results: {OUT / 'results.json'}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
