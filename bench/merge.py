"""Merge benchmark (issue 6): hubswap against the copy floor, a naive transformers script and mergekit.

    make bench                  # or: .venv/bin/python bench/merge.py [--rounds 5]

Story of one run:
  1. inputs     make once, and cache under bench/.cache/, random expert pairs with real shapes
                (bench/experts.py) and the mergekit venv (its own torch, never this one's);
  2. verify     run hubswap, mergekit and the naive script once each and compare their outputs
                with hubswap's, tensor by tensor, byte for byte, before anything is timed;
  3. measure    alternate the contenders over several rounds, each run a fresh process tree
                started once other users leave the CPUs quiet (or after a bounded wait): wall
                time, peak RSS (GNU ``time``), the load when it started; then one untimed
                ``hubswap build`` under cProfile, to say where its time goes;
  4. scale      hubswap on two shapes that differ only in their number of layers (16 and 32);
  5. report     print one table and write docs/PERFORMANCE.md (with bench/ANALYSIS.md).

Caches are warm: a non-privileged user cannot drop the page cache, so every contender reads
experts that the previous runs left in memory (the report says so). Outputs are deleted and
``sync``-ed between runs so one run's write-back does not land in the next one's time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import experts

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
VENV_BIN = Path(sys.executable).parent
MERGEKIT_VENV = CACHE / "mergekit-venv"
# What `pip install mergekit` resolved to on 2026-11-26 next to torch 2.13.0+cpu; pinned so every
# run measures the same mergekit. It brings transformers 5.24 into its own venv, and keeps torch.
MERGEKIT_REQ = "mergekit==0.1.5"
TORCH_REQ = "torch==2.13.0"
DOC = ROOT / "docs" / "PERFORMANCE.md"
ANALYSIS = ROOT / "bench" / "ANALYSIS.md"
HASH_CACHE = CACHE / "hubswap-cache"  # hubswap's sha256 cache (HUBSWAP_CACHE) for these runs

TARGETS = {"floor_ratio": 1.3, "rss_gib": 1.5, "naive_speedup": 3.0, "help_s": 1.0}


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------- inputs


def ensure_mergekit() -> Path:
    """The mergekit venv's ``mergekit-yaml``, installed on first use (CPU torch from /opt/wheels)."""
    exe = MERGEKIT_VENV / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    log(f"installing {MERGEKIT_REQ} into {MERGEKIT_VENV} (its own venv, CPU torch) ...")
    subprocess.run(["python3", "-m", "venv", str(MERGEKIT_VENV)], check=True)
    pip = [str(MERGEKIT_VENV / "bin" / "pip"), "install", "-q"]
    # torch first and pinned, then mergekit with the same pin, so pip can never swap in a CUDA build.
    subprocess.run([*pip, TORCH_REQ], check=True)
    subprocess.run([*pip, MERGEKIT_REQ, TORCH_REQ], check=True)
    return exe


def venv_versions(python: Path, names: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", code, *names], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, header) of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        head = json.loads(f.read(n))
    head.pop("__metadata__", None)
    return 8 + n, head


def tensor_ranges(folder: Path) -> dict[str, tuple[Path, int, int, str, list[int]]]:
    """name -> (file, absolute offset, length, dtype, shape) for every tensor of a model folder."""
    out = {}
    for path in safetensors_files(folder):
        base, head = header(path)
        for name, info in head.items():
            a, b = info["data_offsets"]
            out[name] = (path, base + a, b - a, info["dtype"], info["shape"])
    return out


def layer_map_of(pair: Path):
    from hubswap.layermap import layer_map
    from hubswap.recipe import load_recipe

    recipe = load_recipe(pair / "recipe.toml").recipe
    cfg = json.loads((pair / "task" / "config.json").read_text())
    return layer_map(recipe.swap, cfg["num_hidden_layers"])


def floor_plan(pair: Path) -> tuple[list, int, int]:
    """The floor's byte moves, in output order; also (bytes read, bytes written)."""
    lm = layer_map_of(pair)
    task, lang = tensor_ranges(pair / "task"), tensor_ranges(pair / "language")
    plan, read, written = [], 0, 0
    for name, (tpath, toff, tlen, _, _) in task.items():
        w = lm.for_tensor(name).weight
        lpath, loff, llen, _, _ = lang[name]
        if w == 1:
            plan.append(["copy", str(lpath), loff, llen])
        elif w == 0:
            plan.append(["copy", str(tpath), toff, tlen])
        else:  # a blend reads both sides and writes one tensor
            plan.append(["read", str(lpath), loff, llen])
            plan.append(["copy", str(tpath), toff, tlen])
            read += llen
        read += tlen if w != 1 else llen
        written += tlen
    return plan, read, written


def mergekit_config(pair: Path) -> str:
    """The mergekit config that yields hubswap's tensors exactly.

    A mergekit config has one ``merge_method``, so passthrough (whole layers) and linear (blends)
    cannot be mixed: everything is ``linear``. A one-source slice with weight 1 is computed as
    ``x * 1 / 1`` in float32 and cast back, which gives ``x`` again bit for bit; a two-source slice
    with weights ``w`` and ``1-w`` is ``w*lang + (1-w)*task`` in float32, hubswap's blend.
    mergekit takes embeddings from the first slice's models and the final norm (and an untied
    lm_head) from the last slice's, so ``non_layer`` holds only when those slices are single-model.
    """
    lm = layer_map_of(pair)
    task, lang = str(pair / "task"), str(pair / "language")
    runs: list[list] = []  # [first layer, end, weight]
    for s in lm.layers:
        if runs and runs[-1][2] == s.weight:
            runs[-1][1] = s.index + 1
        else:
            runs.append([s.index, s.index + 1, s.weight])
    want = {1: "language", 0: "task"}[int(lm.non_layer.weight)]
    for end in (runs[0], runs[-1]):
        if {1: "language", 0: "task"}.get(end[2]) != want:
            raise SystemExit(f"mergekit cannot take non-layer tensors from the {want} expert here: "
                             "the first and last slices must come from that expert alone")
    lines = ["# Written by bench/merge.py from the benchmark recipe's layer map.",
             "merge_method: linear", "dtype: bfloat16", "out_dtype: bfloat16", "slices:"]
    for a, b, w in runs:
        lines.append("  - sources:")
        if w in (0, 1):
            model = lang if w == 1 else task
            lines.append(f"      - {{model: {model}, layer_range: [{a}, {b}], parameters: {{weight: 1.0}}}}")
        else:
            lines.append(f"      - {{model: {lang}, layer_range: [{a}, {b}], parameters: {{weight: {float(w)!r}}}}}")
            lines.append(f"      - {{model: {task}, layer_range: [{a}, {b}], "
                         f"parameters: {{weight: {float(1 - w)!r}}}}}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ contenders


@dataclass
class Contender:
    name: str
    argv: list[str]
    output: Path  # removed before and after each run
    model_dir: Path | None = None  # where the merged model lands, for verification
    before: Callable[[], None] | None = None  # untimed set-up before each run

    @property
    def slug(self) -> str:
        return "".join(ch for ch in self.name if ch.isalnum() or ch in "-_")


def naive_args(pair: Path) -> list[str]:
    from hubswap.recipe import load_recipe

    swap = load_recipe(pair / "recipe.toml").recipe.swap
    if swap.tb != swap.tu or swap.non_layer != "language":
        raise SystemExit("bench/naive_merge.py takes one transition size and non-layer tensors from the language expert")
    return ["--bottom", str(swap.bottom), "--top", str(swap.top), "--transition", str(swap.tb)]


def contenders(pair: Path, out_root: Path, mergekit_exe: Path | None, which: set[str]) -> list[Contender]:
    py = str(VENV_BIN / "python")
    plan_file = out_root / "floor-plan.json"
    plan, _, _ = floor_plan(pair)
    out_root.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan))
    out = {n: out_root / n for n in ("floor", "cp", "hubswap", "hubswap-1st", "naive", "mergekit")}
    build = [str(VENV_BIN / "hubswap"), "build", str(pair / "recipe.toml"), "--no-eval", "--no-push", "--output"]
    all_ = [
        Contender("floor", [py, "-S", str(ROOT / "bench" / "floor.py"), str(plan_file), str(out["floor"])],
                  out["floor"]),
        Contender("cp -r", ["cp", "-r", str(pair / "language"), str(out["cp"])], out["cp"]),
        Contender("hubswap", [*build, str(out["hubswap"])], out["hubswap"], out["hubswap"] / "model"),
        Contender("hubswap 1st", [*build, str(out["hubswap-1st"])], out["hubswap-1st"],
                  out["hubswap-1st"] / "model",
                  before=lambda: clean(HASH_CACHE)),
        Contender("naive", [py, str(ROOT / "bench" / "naive_merge.py"), str(pair / "task"),
                            str(pair / "language"), str(out["naive"]), *naive_args(pair)],
                  out["naive"], out["naive"]),
    ]
    if mergekit_exe is not None:
        cfg = out_root / "mergekit.yml"
        cfg.write_text(mergekit_config(pair))
        all_.append(Contender("mergekit", [str(mergekit_exe), str(cfg), str(out["mergekit"])],
                              out["mergekit"], out["mergekit"]))
    return [c for c in all_ if c.name in which]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(CACHE / "hf-home"),
               HUBSWAP_CACHE=str(HASH_CACHE), TOKENIZERS_PARALLELISM="false")
    return env


# --------------------------------------------------------------------------------------- measure


@dataclass
class Run:
    contender: str
    shape: str
    round: int
    wall_s: float
    maxrss_gib: float  # ru_maxrss of the process tree (largest process), file-backed pages included
    tree_rss_gib: float  # largest sum of RSS over the tree, sampled every 50 ms
    anon_gib: float  # largest sum of anonymous RSS (heap) over the tree, sampled every 50 ms
    load: tuple[float, float, float]
    rc: int
    started: str = ""
    others_busy: float = 0.0  # share of all CPUs others used in the 0.5 s before the run


def _rss_poller(pid: int, stop: threading.Event, peaks: dict) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        rss = anon = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += int(line.split()[1]) << 10
                        elif line.startswith("RssAnon:"):
                            anon += int(line.split()[1]) << 10
            except OSError:
                pass
        peaks["rss"] = max(peaks["rss"], rss)
        peaks["anon"] = max(peaks["anon"], anon)
        stop.wait(0.05)


def clean(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _disk() -> str | None:
    """The block device under bench/.cache, as /proc/diskstats names it (e.g. ``vda``)."""
    dev = os.stat(CACHE).st_dev
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if (int(f[0]), int(f[1])) == (os.major(dev), os.minor(dev)):
            return f[2]
    return None


def busy(seconds: float = 0.5) -> tuple[float, float]:
    """(share of all CPUs, share of time the disk was busy) over ``seconds``: other users' work,
    and the write-back or discards of earlier runs, measured while no contender runs."""
    disk = _disk()

    def sample() -> tuple[int, int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        io_ms = next((int(ln.split()[12]) for ln in Path("/proc/diskstats").read_text().splitlines()
                      if ln.split()[2] == disk), 0)
        return sum(fields), fields[3] + fields[4], io_ms  # total, idle + iowait, ms the disk was busy

    (t0, i0, d0), s0 = sample(), time.monotonic()
    time.sleep(seconds)
    (t1, i1, d1), s1 = sample(), time.monotonic()
    return 1 - (i1 - i0) / max(1, t1 - t0), (d1 - d0) / 1000 / (s1 - s0)


QUIET = {"busy": 0.25, "max_wait_s": 15.0}  # set from --quiet / --max-wait


def wait_for_quiet() -> float:
    """Wait (up to ``max_wait_s``) until others use less than ``busy`` of the CPUs and the disk is
    idle (earlier runs' deleted outputs are discarded and written back asynchronously); return the
    others' CPU share."""
    deadline = time.monotonic() + QUIET["max_wait_s"]
    while True:
        cpu, disk = busy()
        if (cpu < QUIET["busy"] and disk < 0.05) or time.monotonic() > deadline:
            return cpu


def measure(c: Contender, shape: str, rnd: int, logs: Path, keep: bool = False) -> Run:
    clean(c.output)
    if c.before is not None:
        c.before()
    os.sync()  # earlier runs' write-back must not land in this run's time
    others = wait_for_quiet()
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{c.slug}-{shape}-{rnd}.log"
    rss_file = logs / "maxrss.txt"
    # GNU time reports its child's ru_maxrss. Measured from this process instead, the value would
    # start at this process's own peak: a forked child's memory high-water mark is copied from its
    # parent's and survives exec.
    argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), "--", *c.argv]
    load = os.getloadavg()
    started = dt.datetime.now().strftime("%H:%M:%S")
    with open(log_file, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
        peaks = {"rss": 0, "anon": 0}
        stop = threading.Event()
        poller = threading.Thread(target=_rss_poller, args=(proc.pid, stop, peaks), daemon=True)
        poller.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
    if rc != 0:
        raise SystemExit(f"{c.name} failed (exit {rc}) on {shape}:\n{log_file.read_text()[-3000:]}")
    if not keep:
        clean(c.output)
    maxrss_kib = int(rss_file.read_text().split()[-1])
    gib = 1 << 30
    return Run(c.name, shape, rnd, wall, maxrss_kib * 1024 / gib, peaks["rss"] / gib,
               peaks["anon"] / gib, tuple(round(x, 2) for x in load), rc, started, round(others, 2))


def help_startup(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([str(VENV_BIN / "hubswap"), "--help"], check=True, capture_output=True, env=child_env())
        times.append(time.perf_counter() - t0)
    return times


PHASES = [  # (label, file suffix, function): cumulative times picked from one cProfile run
    ("whole command (main thread)", "hubswap/cli.py", "main"),
    ("resolve inputs", "hubswap/build.py", "resolve_inputs"),
    ("preflight (headers, configs, tokenizers)", "hubswap/compat.py", "check_compatible"),
    ("merge (swap.merge)", "hubswap/swap.py", "merge"),
    ("  raw byte copies (os.copy_file_range)", "~", "<built-in method posix.copy_file_range>"),
    ("side files (config, tokenizer)", "hubswap/swap.py", "copy_side_files"),
    ("model card", "hubswap/build.py", "write_card"),
]


def profile_hubswap(c: Contender, logs: Path) -> list[tuple[str, float]]:
    """Where ``hubswap build`` spends its time: one untimed run under cProfile, main thread only
    (blends and sha256 run in other threads: what shows is the main thread waiting for them)."""
    import pstats

    clean(c.output)
    os.sync()
    prof = logs / "hubswap.prof"
    argv = [str(VENV_BIN / "python"), "-m", "cProfile", "-o", str(prof), "-m", "hubswap.cli", *c.argv[1:]]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=child_env(), cwd=ROOT)
    wall = time.perf_counter() - t0
    clean(c.output)
    stats = pstats.Stats(str(prof)).stats  # (file, line, function) -> (cc, nc, tottime, cumtime, callers)
    rows = [("process wall time (with interpreter start-up)", wall)]
    for label, suffix, func in PHASES:
        ct = sum(v[3] for (f, _, fn), v in stats.items() if fn == func and f.endswith(suffix))
        rows.append((label, ct))

    def waits(caller: str) -> float:  # main-thread time blocked on another thread's result
        return sum(ct for (f, _, fn), v in stats.items() if fn == "result" and f.endswith("concurrent/futures/_base.py")
                   for (cf, _, _), (_, _, _, ct) in v[4].items() if cf.endswith(caller))

    merge_at = next(i for i, (label, _) in enumerate(rows) if label.startswith("merge"))
    rows.insert(merge_at + 2, ("  waiting for blends (computed in a second thread)", waits("hubswap/swap.py")))
    rows.append(("waiting for the sha256 workers (inputs)", waits("hubswap/build.py")))
    top = dict(rows)
    rows.insert(1, ("interpreter start-up, `import hubswap.cli`, cProfile", wall - top[PHASES[0][0]]))
    rest = top[PHASES[0][0]] - sum(sec for label, sec in rows[3:] if not label.startswith(" "))
    rows.append(("rest: imports of build's modules, recipe, lock, rename", rest))
    return rows


# ---------------------------------------------------------------------------------------- verify


def compare(reference: Path, other: Path) -> list[str]:
    """Differences between two model folders' tensors (names, dtypes, shapes, bytes); [] if none."""
    import mmap

    ref, oth = tensor_ranges(reference), tensor_ranges(other)
    problems = [f"missing {n}" for n in sorted(set(ref) - set(oth))]
    problems += [f"extra {n}" for n in sorted(set(oth) - set(ref))]
    maps: dict[Path, mmap.mmap] = {}

    def data(path: Path, off: int, n: int) -> memoryview:
        if path not in maps:
            with open(path, "rb") as f:
                maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(maps[path])[off:off + n]

    differing = []
    for name in sorted(set(ref) & set(oth)):
        rp, ro, rn, rdt, rshape = ref[name]
        op, oo, on, odt, oshape = oth[name]
        if (rdt, rshape) != (odt, oshape):
            problems.append(f"{name}: {odt}{oshape} != {rdt}{rshape}")
        elif data(rp, ro, rn) != data(op, oo, on):
            differing.append(name)
    if differing:  # say by how much, in the tensors' own dtype
        from safetensors import safe_open

        for name in differing:
            with safe_open(str(ref[name][0]), "pt") as a, safe_open(str(oth[name][0]), "pt") as b:
                x, y = a.get_tensor(name).float(), b.get_tensor(name).float()
            diff = (x - y).abs()
            problems.append(f"{name}: {int((diff > 0).sum())} of {x.numel()} values differ, "
                            f"max |diff| {float(diff.max()):.3g}")
    for m in maps.values():
        m.close()
    return problems


# ---------------------------------------------------------------------------------------- report


def summarize(runs: list[Run], name: str, shape: str) -> dict | None:
    rs = [r for r in runs if r.contender == name and r.shape == shape]
    if not rs:
        return None
    walls = [r.wall_s for r in rs]
    return {
        "n": len(rs), "median": statistics.median(walls), "min": min(walls), "max": max(walls),
        "maxrss": max(r.maxrss_gib for r in rs), "tree_rss": max(r.tree_rss_gib for r in rs),
        "anon": max(r.anon_gib for r in rs),
    }


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal:"))
    fs = subprocess.run(["df", "-T", str(CACHE)], capture_output=True, text=True).stdout.splitlines()[-1].split()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / (1 << 20), 1),
            "fs": f"{fs[1]} on {fs[0]}", "kernel": platform.release(),
            "python": platform.python_version(), "hubswap_commit": commit}


def render(results: dict) -> str:
    main, runs = results["main_shape"], [Run(**r) for r in results["runs"]]
    floor = summarize(runs, "floor", main)
    rows = []
    for name in ("floor", "cp -r", "hubswap", "hubswap 1st", "naive", "mergekit"):
        s = summarize(runs, name, main)
        if s is None:
            continue
        ratio, best = s["median"] / floor["median"], s["min"] / floor["min"]
        rows.append(f"| {name} | {s['median']:.2f} | {s['min']:.2f}–{s['max']:.2f} | {ratio:.2f}x | {best:.2f}x | "
                    f"{s['maxrss']:.2f} | {s['anon']:.2f} | {s['n']} |")
    table = "\n".join([
        "| contender | wall median (s) | min–max (s) | / floor (medians) | / floor (minimums) | "
        "peak RSS (GiB) | peak heap (GiB) | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|", *rows])
    scale_rows = []
    for shape in results["scale_shapes"]:
        for name in ("floor", "hubswap"):
            s = summarize(runs, name, shape)
            if s:
                scale_rows.append(f"| {shape} | {name} | {s['median']:.2f} | {s['min']:.2f}–{s['max']:.2f} | "
                                  f"{s['maxrss']:.2f} | {s['anon']:.2f} | {s['n']} |")
    scale = "\n".join([
        "| shape | contender | wall median (s) | min–max (s) | peak RSS (GiB) | peak heap (GiB) | runs |",
        "|---|---|---:|---:|---:|---:|---:|", *scale_rows])
    raw = "\n".join(
        f"| {r.started} | {r.shape} | {r.round} | {r.contender} | {r.wall_s:.2f} | {r.maxrss_gib:.2f} | "
        f"{r.anon_gib:.2f} | {' '.join(f'{x:.2f}' for x in r.load)} | {100 * r.others_busy:.0f}% |" for r in runs)
    m, v = results["machine"], results["versions"]
    hs = results["help_s"]
    checks = "\n".join(f"- {line}" for line in results["verdicts"])
    # Reading the numbers takes a person: bench/ANALYSIS.md (hand-written, dated) is included as is.
    analysis = ANALYSIS.read_text() + "\n" if ANALYSIS.exists() else ""
    prof = "\n".join(["| phase | seconds |", "|---|---:|",
                      *(f"| {label.strip() if not label.startswith(' ') else '&nbsp;&nbsp;' + label.strip()} "
                        f"| {sec:.2f} |" for label, sec in results["profile"])]) or "(not run)"
    verify = "\n".join(f"- {line}" for line in results["verification"])
    return f"""# Performance

Written by `make bench` (`.venv/bin/python bench/merge.py`) on {results['date']}; do not edit by hand.

The merge of issue 6: a pair of random experts shaped like Llama 3.2 1B (16 layers, hidden 2048,
intermediate 8192, 32 heads / 8 KV heads, vocab 128256, tied embeddings, bfloat16,
{results['expert_gb']:.2f} GB each, in 1 GB shards as on the Hub) merged with bottom 5, top 2,
transition 1, embeddings and final norm from the language expert. The floor reads the
{results['floor_read_gb']:.2f} GB the merge needs and writes {results['floor_written_gb']:.2f} GB.

{table}

- **floor**: `bench/floor.py` moves exactly the needed bytes with `os.copy_file_range` (reads both
  sides of the two blended layers, writes one merged-size file); no arithmetic, no headers.
- **cp -r**: `cp -r` of one expert folder, for reference.
- **hubswap**: `hubswap build bench.toml --no-eval --no-push --output DIR`, the whole command:
  start-up, recipe, preflight, swap, side files, lock, model card. The lock records the sha256 of
  every input file; hubswap caches hashes by (device, inode, size, mtime), so a rebuild reads
  them from the cache. **hubswap 1st** is the same command with that cache emptied before each
  run: a first build, hashing the 4.9 GB of inputs as well.
- **naive**: `bench/naive_merge.py`, `from_pretrained` both experts, blend the state dict in
  float32, `save_pretrained`.
- **mergekit**: `mergekit-yaml` {v['mergekit']} with the config below, default options.
- Wall time is the median of alternating rounds (the order rotates each round), min–max its
  spread; the ratios to the floor are given on medians and on minimums (the runs least disturbed
  by other users). Peak RSS is the contender's `ru_maxrss` as GNU `time` reports it (the largest
  process of the tree; it counts the file-backed pages of memory-mapped checkpoints); peak heap is
  the largest anonymous RSS summed over the process tree, sampled every 50 ms.
- **Warm page cache.** A non-privileged user cannot drop the page cache: every run reads experts
  that earlier runs left in memory. Outputs are deleted and `sync`-ed between runs. Cold-cache
  times would add the disk's read time to every contender alike.
- The machine is shared with other engineers' test suites. Before each run the benchmark waits
  (up to {results['quiet']['max_wait_s']:.0f} s) until other processes use less than
  {100 * results['quiet']['busy']:.0f}% of the CPUs and the disk is idle (the discards and
  write-back of earlier runs' outputs would otherwise land in the next run); the load average and the others' CPU share
  at the start of each run are in the raw table below. Spreads are wide when others were busy.

## Targets

{checks}

`hubswap --help` start-up: median {statistics.median(hs):.2f} s (min {min(hs):.2f}, max {max(hs):.2f},
{len(hs)} runs).

## Where hubswap's time goes

One extra, untimed `hubswap build` under cProfile, main thread. The sha256 of the inputs (cached
here) runs in worker threads; the main thread's wait for them is a row.

{prof}

{analysis}
## Peak memory does not grow with the number of layers

Two shapes that differ only in their number of layers (hidden 1024, intermediate 4096, vocab
128256), same recipe:

{scale}

## Equal outputs, checked before timing

{verify}

mergekit config (one `merge_method` per config, so whole layers are one-source `linear` slices
with weight 1, which mergekit computes as `x * 1 / 1` in float32 and casts back, bit for bit):

```yaml
{results['mergekit_config'].rstrip()}
```

## Machine

{m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB RAM, {m['fs']}, Linux {m['kernel']},
Python {m['python']}; hubswap at {m['hubswap_commit']}; torch {v['torch']}, transformers
{v['transformers']}, safetensors {v['safetensors']} (hubswap and naive); mergekit {v['mergekit']}
with torch {v['mergekit_torch']}, transformers {v['mergekit_transformers']} in its own venv.
`PYTHONDONTWRITEBYTECODE=1` is set on these machines, so imports are not cached as bytecode.

## Raw runs

| start | shape | round | contender | wall (s) | peak RSS (GiB) | peak heap (GiB) | load 1/5/15 min | others' CPU |
|---|---|---:|---|---:|---:|---:|---|---:|
{raw}

Reproduce: `make bench` (first run makes the experts, about {2 * results['expert_gb']:.0f} GB, and the
mergekit venv under `bench/.cache/`). `--rounds N`, `--only hubswap,floor`, `--no-doc`: see
`bench/merge.py --help`.
"""


def verdicts(runs: list[Run], main: str, scale_shapes: list[str], help_s: list[float]) -> list[str]:
    out = []
    floor, hub = summarize(runs, "floor", main), summarize(runs, "hubswap", main)
    naive, mk = summarize(runs, "naive", main), summarize(runs, "mergekit", main)

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    if floor and hub:
        r, best = hub["median"] / floor["median"], hub["min"] / floor["min"]
        out.append(f"hubswap / floor = {r:.2f}x on medians, {best:.2f}x on minimums "
                   f"(target <= {TARGETS['floor_ratio']}x): {mark(r <= TARGETS['floor_ratio'])}")
        out.append(f"hubswap peak RSS {hub['maxrss']:.2f} GiB (target < {TARGETS['rss_gib']} GiB): "
                   f"{mark(hub['maxrss'] < TARGETS['rss_gib'])}")
    first = summarize(runs, "hubswap 1st", main)
    if floor and first:
        r, best = first["median"] / floor["median"], first["min"] / floor["min"]
        out.append(f"hubswap first build (inputs hashed) / floor = {r:.2f}x on medians, {best:.2f}x on "
                   f"minimums: {mark(r <= TARGETS['floor_ratio'])}")
    if hub and naive:
        r = naive["median"] / hub["median"]
        out.append(f"naive / hubswap = {r:.1f}x faster (target >= {TARGETS['naive_speedup']}x): "
                   f"{mark(r >= TARGETS['naive_speedup'])}")
    if hub and mk:
        r = mk["median"] / hub["median"]
        out.append(f"mergekit / hubswap = {r:.2f}x (target > 1): {mark(r > 1)}")
    scale = [summarize(runs, "hubswap", s) for s in scale_shapes]
    if len(scale_shapes) == 2 and all(scale):
        a, b = scale
        grow = b["maxrss"] / a["maxrss"]
        out.append(f"hubswap peak RSS {a['maxrss']:.2f} GiB at {scale_shapes[0]}, {b['maxrss']:.2f} GiB at "
                   f"{scale_shapes[1]} ({grow:.2f}x for 2x the layers; target: flat): "
                   f"{mark(grow < 1.15)}")
    h = statistics.median(help_s)
    out.append(f"`hubswap --help` {h:.2f} s (target < {TARGETS['help_s']} s): {mark(h < TARGETS['help_s'])}")
    return out


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per contender (default 5)")
    p.add_argument("--scale-rounds", type=int, default=3, help="rounds for the layer-count shapes")
    p.add_argument("--only", default="floor,cp -r,hubswap,hubswap 1st,naive,mergekit",
                   help="comma-separated contenders (default: all)")
    p.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    p.add_argument("--no-scale", action="store_true", help="skip the 16/32-layer shapes")
    p.add_argument("--no-doc", action="store_true", help="print the table, do not write docs/PERFORMANCE.md")
    p.add_argument("--quiet", type=float, default=0.25, metavar="FRACTION",
                   help="before each run, wait until other processes use less than this share of the "
                        "CPUs (default 0.25) ...")
    p.add_argument("--max-wait", type=float, default=15.0, metavar="S", help="... for at most S seconds (default 15)")
    args = p.parse_args(argv)
    QUIET.update(busy=args.quiet, max_wait_s=args.max_wait)
    which = {w.strip() for w in args.only.split(",")}

    # 1. inputs
    free = shutil.disk_usage(CACHE.parent).free / 1e9
    log(f"disk free {free:.0f} GB; load {os.getloadavg()}; {dt.datetime.now():%H:%M:%S}")
    if free < 15:
        raise SystemExit("need about 15 GB free under bench/.cache (experts, outputs)")
    pair = experts.ensure_pair(experts.LLAMA_1B, CACHE, log)
    mk_exe = ensure_mergekit() if "mergekit" in which else None
    out_root = CACHE / "out"
    cs = contenders(pair, out_root, mk_exe, which)
    _, read_b, written_b = floor_plan(pair)
    versions = venv_versions(VENV_BIN / "python", ["torch", "transformers", "safetensors"])
    if mk_exe:
        mv = venv_versions(MERGEKIT_VENV / "bin" / "python", ["mergekit", "torch", "transformers"])
        versions.update(mergekit=mv["mergekit"], mergekit_torch=mv["torch"],
                        mergekit_transformers=mv["transformers"])
        if not mv["torch"].endswith("+cpu"):
            raise SystemExit(f"the mergekit venv has torch {mv['torch']}, not the CPU build")
    else:
        versions.update(mergekit="-", mergekit_torch="-", mergekit_transformers="-")
    logs = CACHE / "logs"

    # 2. verify (also warms the page cache)
    verification = []
    if not args.no_verify:
        by_name = {c.name: c for c in cs}
        ref = by_name.get("hubswap")
        if ref is None:
            raise SystemExit("verification needs hubswap among the contenders (or --no-verify)")
        log("verify: one run of each merger, outputs compared with hubswap's ...")
        measure(ref, experts.LLAMA_1B.name, 0, logs, keep=True)
        for c in cs:
            if c.model_dir is None or c.name.startswith("hubswap"):
                continue
            measure(c, experts.LLAMA_1B.name, 0, logs, keep=True)
            problems = compare(ref.model_dir, c.model_dir)
            n = len(tensor_ranges(ref.model_dir))
            if problems:
                verification.append(f"{c.name}: **differs** from hubswap: " + "; ".join(problems[:8]))
            else:
                verification.append(f"{c.name}: all {n} tensors equal hubswap's, byte for byte")
            log(f"  {verification[-1]}")
            clean(c.output)
        clean(ref.output)

    # 3. measure, alternating
    runs: list[Run] = []
    for rnd in range(1, args.rounds + 1):
        k = (rnd - 1) % len(cs)
        for c in cs[k:] + cs[:k]:
            r = measure(c, experts.LLAMA_1B.name, rnd, logs)
            runs.append(r)
            log(f"round {rnd} {c.name:9s} {r.wall_s:7.2f} s  rss {r.maxrss_gib:5.2f} GiB  "
                f"heap {r.anon_gib:5.2f} GiB  load {r.load}  others {100 * r.others_busy:.0f}%")

    profile = []
    hub = next((c for c in cs if c.name == "hubswap"), None)
    if hub is not None:
        profile = profile_hubswap(hub, logs)
        for label, sec in profile:
            log(f"profile {label:48s} {sec:6.2f} s")

    # 4. scale: only the number of layers changes
    scale_shapes = []
    if not args.no_scale and "hubswap" in which:
        for shape in (experts.WIDE_16, experts.WIDE_32):
            spair = experts.ensure_pair(shape, CACHE, log)
            scs = [c for c in contenders(spair, CACHE / "out-scale", None, {"floor", "hubswap"})]
            scale_shapes.append(shape.name)
            for c in scs:  # untimed: fills the page cache and hubswap's hash cache, as for the main shape
                measure(c, shape.name, 0, logs)
            for rnd in range(1, args.scale_rounds + 1):
                for c in scs if rnd % 2 else scs[::-1]:
                    r = measure(c, shape.name, rnd, logs)
                    runs.append(r)
                    log(f"{shape.name} round {rnd} {c.name:9s} {r.wall_s:7.2f} s  rss {r.maxrss_gib:5.2f} GiB  "
                        f"heap {r.anon_gib:5.2f} GiB  load {r.load}  others {100 * r.others_busy:.0f}%")

    help_s = help_startup(7) if "hubswap" in which else [float("nan")]

    # 5. report
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "main_shape": experts.LLAMA_1B.name, "scale_shapes": scale_shapes,
        "expert_gb": experts.LLAMA_1B.num_bytes() / 1e9, "floor_read_gb": read_b / 1e9,
        "floor_written_gb": written_b / 1e9, "machine": machine(), "versions": versions,
        "help_s": help_s, "verification": verification or ["not run (--no-verify)"],
        "mergekit_config": mergekit_config(pair), "runs": [asdict(r) for r in runs], "quiet": dict(QUIET),
        "profile": profile,
    }
    results["verdicts"] = verdicts(runs, experts.LLAMA_1B.name, scale_shapes, help_s)
    (CACHE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    print(text.split("## Machine")[0])
    if not args.no_doc:
        DOC.write_text(text)
        log(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
