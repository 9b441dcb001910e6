"""The cloning case of the merge benchmark (issue 27): a loop-mounted XFS image (reflink on).

    .venv/bin/python bench/clone.py [--rounds 3] [--cases bf16,fp32]     # as root; make bench runs it

Story of one run:
  1. image      make (once) and mount ``bench/.cache/xfs.img``, a sparse 20 GB file holding an XFS
                filesystem with reflink on, and make the expert pairs of bench/experts.py inside it
                (the 1B-shaped bf16 pair, and its twin with a float32 language expert), so that
                the experts and the outputs share blocks as a Hub cache and a build folder on one
                XFS disk do;
  2. verify     the cloned merge and today's copying merge (``--no-clone``), tensor by tensor, byte
                for byte (bench/merge.py's ``compare``);
  3. measure    alternate ``cp --reflink=always -r`` of the task expert (the new floor: a clone of
                the merged model's size), ``hubswap build`` (cloning) and ``hubswap build
                --no-clone`` (today's copying merge) over a few rounds: page-cache wall time,
                durable (until every output is fsynced), and the disk blocks each output took
                (statvfs of the image before and after, synced);
  4. report     print the table and put it into docs/PERFORMANCE.md (its "Cloning" section, which
                bench/merge.py keeps when it rewrites the page).

Unmounts the image on the way out (failures included); the image and its experts are kept for the
next run under bench/.cache/ (delete ``xfs.img`` to start over).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import experts
import merge as bench
import report

IMAGE = bench.CACHE / "xfs.img"
MOUNT = bench.CACHE / "xfs"
IMAGE_BYTES = 20 << 30
CASES = {"bf16": experts.LLAMA_1B, "fp32": experts.LLAMA_1B_F32}
TARGETS = {"cp": 3.0, "copying": 0.25, "new_blocks": 0.15}  # issue 27, on the bf16 pair


@contextlib.contextmanager
def xfs_image():
    """The XFS image mounted at ``MOUNT`` (made on first use); unmounted afterwards."""
    if os.geteuid() != 0:
        raise SystemExit("bench/clone.py mounts an XFS image: run it as root")
    if shutil.which("mkfs.xfs") is None:
        raise SystemExit("mkfs.xfs is missing: apt-get install xfsprogs")
    MOUNT.mkdir(parents=True, exist_ok=True)
    if not IMAGE.exists():
        with open(IMAGE, "wb") as f:
            f.truncate(IMAGE_BYTES)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(IMAGE)], check=True)
    subprocess.run(["mount", "-o", "loop", str(IMAGE), str(MOUNT)], check=True)
    try:
        yield MOUNT
    finally:
        if subprocess.run(["umount", str(MOUNT)]).returncode:
            subprocess.run(["umount", "-l", str(MOUNT)])


def used() -> int:
    """Bytes in use on the image once settled: synced, and the blocks of files deleted before freed
    (XFS frees them in the background: wait until two readings 0.2 s apart agree, at most 10 s)."""
    last = None
    for _ in range(50):
        os.sync()
        st = os.statvfs(MOUNT)
        now = (st.f_blocks - st.f_bfree) * st.f_frsize
        if now == last:
            break
        last = now
        time.sleep(0.2)
    return now


def contenders(pair: Path, out: Path) -> list[bench.Contender]:
    build = [str(bench.VENV_BIN / "hubswap"), "build", str(pair / "recipe.toml"), "--no-eval", "--no-push", "--output"]
    return [
        bench.Contender("cp --reflink", ["cp", "-r", "--reflink=always", str((pair / "task").resolve()),
                                         str(out / "cp")], out / "cp"),
        bench.Contender("hubswap cloned", [*build, str(out / "cloned")], out / "cloned", out / "cloned" / "model"),
        bench.Contender("hubswap copying", [*build, str(out / "copying"), "--no-clone"], out / "copying",
                        out / "copying" / "model"),
    ]


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children: what a run cost in CPU,
    whatever the load others put on a shared machine."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def merged_bytes(model: Path) -> dict:
    return json.loads((model / "hubswap" / "lock.json").read_text())["output"]["merge"]


def run_case(name: str, rounds: int, logs: Path) -> dict:
    shape = CASES[name]
    pair = experts.ensure_pair(shape, MOUNT, log=bench.log)
    out = MOUNT / "out" / name
    cs = contenders(pair, out)
    # Verify (and fill hubswap's hash cache, so the timed builds are second builds, as in merge.py).
    for c in cs[1:]:
        bench.measure(c, shape.name, 0, logs, keep=True)
    problems = bench.compare(cs[2].model_dir, cs[1].model_dir)
    if problems:
        raise SystemExit(f"{name}: the cloned merge differs from the copying one: {problems[:5]}")
    made = merged_bytes(cs[1].model_dir)
    size = sum(made.values())
    for c in cs[1:]:
        bench.clean(c.output)
    runs: dict[str, list] = {c.name: [] for c in cs}
    for rnd in range(1, rounds + 1):
        for c in cs if rnd % 2 else cs[::-1]:
            before, cpu = used(), _children_cpu()
            r = bench.measure(c, shape.name, rnd, logs, keep=True)
            cpu, new = _children_cpu() - cpu, used() - before
            bench.clean(c.output)
            runs[c.name].append({"wall_s": r.wall_s, "durable_s": r.durable_s, "cpu_s": cpu, "new_bytes": new,
                                 "anon_mib": r.anon_gib * 1024, "others_busy": r.others_busy})
            bench.log(f"{name} round {rnd} {c.name:16s} {r.wall_s:6.2f} s  durable {r.durable_s:6.2f} s  "
                      f"cpu {cpu:6.2f} s  new blocks {new / 1e6:8.1f} MB  (others used {100 * r.others_busy:.0f}%)")
    med = {n: {k: statistics.median(x[k] for x in rs) for k in ("wall_s", "durable_s", "cpu_s", "new_bytes",
                                                                 "anon_mib", "others_busy")}
           for n, rs in runs.items()}
    return {"case": name, "shape": shape.name, "size": size, "merge": made, "median": med, "runs": runs,
            "verified": "every tensor equal, byte for byte, to the copying merge's"}


def render(results: dict) -> str:
    rows, checks = [], []
    for c in results["cases"]:
        med, size = c["median"], c["size"]
        cp, copying = med["cp --reflink"], med["hubswap copying"]
        for n, m in med.items():
            rows.append(f"| {report.CASE_TITLES.get(c['case'], c['case'])} | {n} | {m['cpu_s']:.2f} | "
                        f"{100 * m['others_busy']:.0f}% | {m['wall_s']:.2f} | "
                        f"{m['wall_s'] / cp['wall_s']:.2f}x | {m['wall_s'] / copying['wall_s']:.2f}x | "
                        f"{m['durable_s']:.2f} | {m['durable_s'] / cp['durable_s']:.2f}x | "
                        f"{m['durable_s'] / copying['durable_s']:.2f}x | {m['new_bytes'] / 1e6:.0f} | "
                        f"{100 * m['new_bytes'] / size:.1f}% | {len(c['runs'][n])} |")
        made = c["merge"]
        cloned = med["hubswap cloned"]
        checks.append(f"- {report.CASE_TITLES.get(c['case'], c['case'])}: "
                      + ", ".join(f"{made[k] / 1e9:.2f} GB {k}" for k in ("cloned", "copied", "blended", "cast"))
                      + f" ({100 * made['cloned'] / size:.0f}% of {size / 1e9:.2f} GB cloned); {c['verified']}.")
        if c["case"] == "bf16":
            for label, value, target in [
                    ("cloned merge / cp --reflink, page-cache", cloned["wall_s"] / cp["wall_s"], TARGETS["cp"]),
                    ("cloned merge / cp --reflink, durable", cloned["durable_s"] / cp["durable_s"], TARGETS["cp"]),
                    ("cloned / copying merge, page-cache", cloned["wall_s"] / copying["wall_s"], TARGETS["copying"]),
                    ("cloned / copying merge, durable", cloned["durable_s"] / copying["durable_s"],
                     TARGETS["copying"]),
                    ("cloned / copying merge, CPU time", cloned["cpu_s"] / copying["cpu_s"], TARGETS["copying"]),
                    ("cloned merge / cp --reflink, CPU time", cloned["cpu_s"] / cp["cpu_s"], TARGETS["cp"]),
                    ("new blocks / merged size", cloned["new_bytes"] / size, TARGETS["new_blocks"])]:
                checks.append(f"- bf16 pair, {label}: {value:.2f} (target <= {target}): "
                              f"{'met' if value <= target else 'NOT met'}")
    return (f"{report.CLONE_BEGIN}\n## Cloning: zero-copy merges on XFS (reflink)\n\n"
            f"`bench/clone.py`, {results['date']}, on {results['machine']}: the experts and the outputs on one "
            "loop-mounted XFS image (reflink on; the image file on the host's disk). **cp --reflink**: "
            "`cp -r --reflink=always` of the task expert, the floor (a clone of the merged model's size); "
            "**hubswap cloned**: `hubswap build` (whole tensors cloned, the blended and cast ones written); "
            "**hubswap copying**: the same with `--no-clone`, today's copying merge. Medians; durable is until "
            "every output file is fsynced; new blocks is the image's used space after minus before, synced.\n\n"
            "| case | contender | CPU (s) | others' CPU | page-cache (s) | vs cp --reflink | vs copying | durable (s) "
            "| vs cp --reflink | vs copying | new blocks (MB) | of the model | runs |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
            + "\n".join(checks) + "\n\nReproduce (as root): `.venv/bin/python bench/clone.py` (`make bench` runs "
            "it after bench/merge.py).\n" + report.CLONE_END + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per contender (default 3)")
    p.add_argument("--cases", default="bf16,fp32", help="bf16 (the 1B-shaped bf16 pair), fp32 (its float32 "
                   "language expert twin); default both")
    p.add_argument("--no-doc", action="store_true", help="print the table, write no report")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount the image on the way out
    logs = bench.CACHE / "logs-clone"
    with xfs_image():
        cases = [run_case(name, args.rounds, logs) for name in args.cases.split(",")]
    m = bench.machine()
    saved = bench.CACHE / "results-clone.json"
    if saved.exists():  # the cases not run this time, as an earlier run measured them
        ran = {c["case"] for c in cases}
        cases = [c for c in json.loads(saved.read_text())["cases"] if c["case"] not in ran] + cases
        cases.sort(key=lambda c: list(CASES).index(c["case"]))
    results = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cases": cases,
               "machine": f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"}
    saved.write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    print(text)
    if not args.no_doc:
        bench.DOC.write_text(report.with_section(bench.DOC.read_text() if bench.DOC.exists() else "", text))
        bench.log(f"wrote {bench.DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
