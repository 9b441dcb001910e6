"""The merge benchmark's report: summaries, verdicts against issue 14's targets, docs/PERFORMANCE.md.

Pure functions of the results dict that bench/merge.py writes to ``bench/.cache/results*.json``,
so a report can be rendered again from saved results (``python bench/report.py RESULTS.json``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# Issue 14: hubswap / cp on the page-cache timing, per size and case; first build / second build.
CP_TARGETS = {"1b": {"bf16": 1.3, "fp32": 1.3}, "8b": {"bf16": 1.10, "fp32": 1.25}}
FIRST_BUILD = 1.5
RSS_MIB = 256
NAIVE_SPEEDUP = 3.0
HELP_S = 1.0
CONTENDERS = ("floor", "cp -r", "hubswap", "hubswap 1st", "naive", "mergekit")
CASE_TITLES = {"bf16": "bf16 experts", "fp32": "float32 language expert"}
# The cloning case's section (bench/clone.py), kept when bench/merge.py rewrites the page.
CLONE_BEGIN, CLONE_END = "<!-- bench/clone.py -->", "<!-- /bench/clone.py -->"


def with_section(doc: str, section: str) -> str:
    """``doc`` with its cloning section replaced by ``section`` (or inserted before "## Machine")."""
    if CLONE_BEGIN in doc and CLONE_END in doc:
        head, _, rest = doc.partition(CLONE_BEGIN)
        return head + section.rstrip("\n") + rest.partition(CLONE_END)[2]
    head, sep, tail = doc.partition("## Machine")
    return head + section + "\n" + sep + tail if sep else doc + "\n" + section


def clone_section(doc: str) -> str:
    """The cloning section of ``doc`` ("" if none)."""
    if CLONE_BEGIN not in doc or CLONE_END not in doc:
        return ""
    return CLONE_BEGIN + doc.partition(CLONE_BEGIN)[2].partition(CLONE_END)[0] + CLONE_END + "\n"


def summarize(runs: list[dict], name: str, shape: str) -> dict | None:
    rs = [r for r in runs if r["contender"] == name and r["shape"] == shape]
    if not rs:
        return None
    walls, durable = [r["wall_s"] for r in rs], [r["durable_s"] for r in rs]
    return {
        "n": len(rs), "median": statistics.median(walls), "min": min(walls), "max": max(walls),
        "durable": statistics.median(durable), "durable_min": min(durable), "durable_max": max(durable),
        "maxrss_mib": max(r["maxrss_gib"] for r in rs) * 1024, "anon_mib": max(r["anon_gib"] for r in rs) * 1024,
    }


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def verdicts(results: dict) -> list[str]:
    out = []
    runs, size = results["runs"], results["size"]
    for case in results["cases"]:
        shape, label = case["shape"], CASE_TITLES.get(case["case"], case["case"])
        cp, hub = summarize(runs, "cp -r", shape), summarize(runs, "hubswap", shape)
        first, naive = summarize(runs, "hubswap 1st", shape), summarize(runs, "naive", shape)
        mk = summarize(runs, "mergekit", shape)
        target = CP_TARGETS[size].get(case["case"])
        busy = statistics.median([r["others_busy"] for r in runs if r["shape"] == shape] or [0])
        caveat = (f" (NOT a quiet run: other users took a median {100 * busy:.0f}% of the CPUs before each "
                  "run, so this ratio is no evidence either way)" if busy > 0.25 else "")
        if cp and hub and target:
            r, d = hub["median"] / cp["median"], hub["durable"] / cp["durable"]
            out.append(f"{label}: hubswap / cp = {r:.2f}x page-cache (target <= {target}x): {_mark(r <= target)}"
                       f"{caveat}; durable {d:.2f}x, like for like: hubswap's own time includes syncing its "
                       f"output (durable builds, issue 11), cp's page-cache time does not")
        if hub and first:
            r = first["median"] / hub["median"]
            out.append(f"{label}: first build / second build = {r:.2f}x page-cache (target <= {FIRST_BUILD}x, "
                       f"set at 8B shape): {_mark(r <= FIRST_BUILD)}")
        for name, s in (("hubswap", hub), ("hubswap 1st", first)):
            if s:
                out.append(f"{label}: {name} peak RSS {s['maxrss_mib']:.0f} MiB (target < {RSS_MIB} MiB): "
                           f"{_mark(s['maxrss_mib'] < RSS_MIB)}")
        if hub and naive:
            r = naive["median"] / hub["median"]
            out.append(f"{label}: naive / hubswap = {r:.1f}x (target >= {NAIVE_SPEEDUP}x): {_mark(r >= NAIVE_SPEEDUP)}")
        if hub and mk:
            r = mk["median"] / hub["median"]
            out.append(f"{label}: mergekit / hubswap = {r:.1f}x (target > 1): {_mark(r > 1)}")
    scale = [summarize(runs, "hubswap", s) for s in results["scale_shapes"]]
    if len(scale) == 2 and all(scale):
        a, b = scale
        grow = b["maxrss_mib"] / a["maxrss_mib"]
        out.append(f"hubswap peak RSS {a['maxrss_mib']:.0f} MiB at {results['scale_shapes'][0]}, "
                   f"{b['maxrss_mib']:.0f} MiB at {results['scale_shapes'][1]} ({grow:.2f}x for 2x the layers; "
                   f"target: flat): {_mark(grow < 1.15)}")
    hs = [h for h in results["help_s"] if h == h]
    if hs:
        h = statistics.median(hs)
        out.append(f"`hubswap --help` {h:.2f} s (target < {HELP_S} s): {_mark(h < HELP_S)}")
    return out


def _table(results: dict) -> str:
    rows = []
    for case in results["cases"]:
        shape = case["shape"]
        cp, floor = summarize(results["runs"], "cp -r", shape), summarize(results["runs"], "floor", shape)
        for name in CONTENDERS:
            s = summarize(results["runs"], name, shape)
            if s is None:
                continue
            vs_cp = f"{s['median'] / cp['median']:.2f}x" if cp else "-"
            vs_floor = f"{s['median'] / floor['median']:.2f}x" if floor else "-"
            d_cp = f"{s['durable'] / cp['durable']:.2f}x" if cp else "-"
            rows.append(f"| {CASE_TITLES.get(case['case'], case['case'])} | {name} | {s['median']:.2f} | "
                        f"{s['min']:.2f}–{s['max']:.2f} | {vs_cp} | {vs_floor} | {s['durable']:.2f} | "
                        f"{s['durable_min']:.2f}–{s['durable_max']:.2f} | {d_cp} | {s['maxrss_mib']:.0f} | "
                        f"{s['anon_mib']:.0f} | {s['n']} |")
    return "\n".join([
        "| case | contender | page-cache median (s) | min–max | / cp | / floor | durable median (s) | min–max | "
        "/ cp | peak RSS (MiB) | peak heap (MiB) | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows])


def _profile(rows: list) -> str:
    if not rows:
        return "(not run)"
    return "\n".join(["| phase | seconds |", "|---|---:|", *(
        f"| {('&nbsp;&nbsp;' + label.strip()) if label.startswith(' ') else label} | {sec:.2f} |"
        for label, sec in rows)])


def render(results: dict, analysis: str = "") -> str:
    size, m, v = results["size"], results["machine"], results["versions"]
    cases = "\n".join(
        f"- **{CASE_TITLES.get(c['case'], c['case'])}** (`{c['shape']}`): {c['description']}; the floor reads "
        f"{c['floor_read_gb']:.2f} GB and writes {c['floor_written_gb']:.2f} GB." for c in results["cases"])
    checks = "\n".join(f"- {line}" for line in results["verdicts"])
    profiles = "\n\n".join(f"**{CASE_TITLES.get(c['case'], c['case'])}**\n\n{_profile(c['profile'])}"
                           for c in results["cases"])
    verify = "\n".join(f"- {CASE_TITLES.get(c['case'], c['case'])}, {line}" for c in results["cases"]
                       for line in c["verification"])
    configs = "\n\n".join(f"{CASE_TITLES.get(c['case'], c['case'])}:\n\n```yaml\n{c['mergekit_config'].rstrip()}\n```"
                          for c in results["cases"] if c.get("mergekit_config"))
    scale_rows = []
    for shape in results["scale_shapes"]:
        for name in ("floor", "hubswap"):
            s = summarize(results["runs"], name, shape)
            if s:
                scale_rows.append(f"| {shape} | {name} | {s['median']:.2f} | {s['min']:.2f}–{s['max']:.2f} | "
                                  f"{s['maxrss_mib']:.0f} | {s['anon_mib']:.0f} | {s['n']} |")
    scale = ("## Peak memory does not grow with the number of layers\n\nTwo shapes that differ only in "
             "their number of layers (hidden 1024, intermediate 4096, vocab 128256), same recipe, bf16:\n\n"
             + "\n".join(["| shape | contender | page-cache median (s) | min–max | peak RSS (MiB) | "
                          "peak heap (MiB) | runs |", "|---|---|---:|---:|---:|---:|---:|", *scale_rows])
             + "\n") if scale_rows else ""
    raw = "\n".join(
        f"| {r['started']} | {r['shape']} | {r['round']} | {r['contender']} | {r['wall_s']:.2f} | "
        f"{r['durable_s']:.2f} | {r['maxrss_gib'] * 1024:.0f} | {r['anon_gib'] * 1024:.0f} | "
        f"{' '.join(f'{x:.2f}' for x in r['load'])} | {100 * r['others_busy']:.0f}% |" for r in results["runs"])
    hs = [h for h in results["help_s"] if h == h]
    help_line = (f"`hubswap --help` start-up: median {statistics.median(hs):.2f} s (min {min(hs):.2f}, "
                 f"max {max(hs):.2f}, {len(hs)} runs).\n" if hs else "")
    command = "make bench" if size == "1b" else f"python bench/merge.py --shape {size}"
    return f"""# Performance{'' if size == '1b' else ' at 8B shape'}

Written by `{command}` (bench/merge.py) on {results['date']}; do not edit by hand.

Issue 14's two cases: pairs of random experts with real shapes, merged by the recipe of issue 6
(bottom 5, top 2, transition 1, embeddings, final norm and lm_head from the language expert,
bf16 output), each contender a fresh process:

{cases}

{_table(results)}

- **floor**: `bench/floor.py` moves exactly the needed bytes: kernel copies
  (`os.copy_file_range`) of the tensors taken whole, a read of both sides of the blended layers,
  and for a float32 language expert a read of each cast tensor and a write of the output's size of
  it, with no arithmetic; no headers.
- **cp -r**: `cp -r` of the task expert (the size of the merged model), the issue's yardstick.
- **hubswap**: `hubswap build RECIPE --no-eval --no-push --output DIR`, the whole command:
  start-up, recipe, preflight, swap, side files, lock, model card. The lock records the sha256 of
  every input file, cached by (device, inode, size, mtime, ctime): this is a second build.
  **hubswap 1st** is the same command with that cache emptied before each run: a first build,
  hashing every input as well.
- **naive**: `bench/naive_merge.py`, `from_pretrained` both experts, blend the state dict in
  float32, `save_pretrained`. **mergekit**: `mergekit-yaml` {v.get('mergekit', '-')} with the
  configs below, default options.
- **page-cache** is the command's wall time: its outputs are in the page cache, not necessarily
  on disk. **durable** is the same run until every output file is on disk: the benchmark fsyncs
  each output file (and folder) as soon as the command exits and adds that time.
- Wall time is the median of alternating rounds (the order rotates each round); min–max its
  spread. Peak RSS is the contender's `ru_maxrss` as GNU `time` reports it (the largest process
  of the tree); peak heap is the largest anonymous RSS summed over the process tree, sampled
  every 50 ms.
- **Warm page cache.** A non-privileged user cannot drop the page cache: every run reads experts
  that earlier runs left in memory. Outputs are deleted and `sync`-ed between runs.
- Before each run the benchmark waits (up to {results['quiet']['max_wait_s']:.0f} s) until other
  processes use less than {100 * results['quiet']['busy']:.0f}% of the CPUs and the disk is idle;
  the load average and the others' CPU share at the start of each run are in the raw table.

## Targets

{checks}

{help_line}
## Where hubswap's time goes

One extra, untimed `hubswap build` per case under cProfile, main thread (which copies raw ranges
in the kernel, then takes computed chunks like the other threads until none is left). The other
threads, blends and casts and the inputs' sha256, show only as the main thread's waits.

{profiles}

{analysis}
{scale}
## Equal outputs, checked before timing

{verify}

{configs}

## Machine

{m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB RAM, {m['fs']}, Linux {m['kernel']},
Python {m['python']}; hubswap at {m['hubswap_commit']}; numpy {v.get('numpy', '-')};
torch {v.get('torch', '-')}, transformers {v.get('transformers', '-')},
safetensors {v.get('safetensors', '-')} (naive); mergekit {v.get('mergekit', '-')} with torch
{v.get('mergekit_torch', '-')}, transformers {v.get('mergekit_transformers', '-')} in its own venv.

## Raw runs

| start | case | round | contender | page-cache (s) | durable (s) | peak RSS (MiB) | peak heap (MiB) | load 1/5/15 min | others' CPU |
|---|---|---:|---|---:|---:|---:|---:|---|---:|
{raw}

Reproduce: `{command}` (the first run makes the experts under `bench/.cache/`). `--cases`,
`--rounds N`, `--only hubswap,cp -r`, `--no-doc`: see `bench/merge.py --help`.
"""


def main(argv: list[str] | None = None) -> int:
    """Render a report again from saved results, e.g. with an analysis written after the run:
    ``python bench/report.py bench/.cache/results.json --analysis bench/ANALYSIS.md --out docs/PERFORMANCE.md``."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("results", type=Path)
    p.add_argument("--analysis", type=Path, help="hand-written text included after the profiles")
    p.add_argument("--out", type=Path, help="write here instead of printing")
    a = p.parse_args(argv)
    results = json.loads(a.results.read_text())
    results["verdicts"] = verdicts(results)
    text = render(results, a.analysis.read_text() + "\n" if a.analysis else "")
    if a.out:
        a.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
