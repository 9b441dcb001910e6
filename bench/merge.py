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
    from hubswap.safetensors_format import DATA_START, read_header_file

    head = read_header_file(path)
    return head.pop(DATA_START), head


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
    from hubswap.layermap import find_layer_stack, layer_map
    from hubswap.recipe import load_recipe

    recipe = load_recipe(pair / "recipe.toml").recipe
    cfg = json.loads((pair / "task" / "config.json").read_text())
    stack = find_layer_stack(cfg, {name: t[4] for name, t in tensor_ranges(pair / "task").items()})
    return layer_map(recipe.swap, stack.num_layers, stack)


def floor_plan(pair: Path) -> tuple[list, int, int]:
    """The floor's byte moves, in output order; also (bytes read, bytes written).

    A tensor taken in its own dtype is a kernel copy; one whose dtype changes (a float32 language
    expert's, cast to bf16) is read whole and the output's size of it written (``cast``: no
    arithmetic); a blend reads the other side too."""
    lm = layer_map_of(pair)
    task, lang = tensor_ranges(pair / "task"), tensor_ranges(pair / "language")
    plan, read, written = [], 0, 0
    for name, (tpath, toff, tlen, tdtype, _) in task.items():
        w = lm.for_tensor(name).weight
        lpath, loff, llen, ldtype, _ = lang[name]
        if w == 1 and ldtype == tdtype:
            plan.append(["copy", str(lpath), loff, llen])
        elif w == 1:
            plan.append(["cast", str(lpath), loff, llen, tlen])
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
    # mergekit casts every input to ``dtype`` as it loads it: float32 when an expert is float32, or
    # its blends would start from bf16-rounded values (hubswap blends the float32 values).
    f32 = "F32" in {info[3] for info in tensor_ranges(pair / "language").values()}
    lines = ["# Written by bench/merge.py from the benchmark recipe's layer map.",
             "merge_method: linear", f"dtype: {'float32' if f32 else 'bfloat16'}", "out_dtype: bfloat16", "slices:"]
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
        # The task expert: the size of the merged model in both cases (the language expert is
        # twice that when it is float32).
        Contender("cp -r", ["cp", "-r", str((pair / "task").resolve()), str(out["cp"])], out["cp"]),
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
    shape: str  # the case: a pair of experts (e.g. llama-3.2-1b, or its float32-language twin)
    round: int
    wall_s: float  # page-cache: the command's wall time, its outputs possibly not yet on disk
    maxrss_gib: float  # ru_maxrss of the process tree (largest process), file-backed pages included
    tree_rss_gib: float  # largest sum of RSS over the tree, sampled every 50 ms
    anon_gib: float  # largest sum of anonymous RSS (heap) over the tree, sampled every 50 ms
    load: tuple[float, float, float]
    rc: int
    started: str = ""
    others_busy: float = 0.0  # share of all CPUs others used in the 0.5 s before the run
    durable_s: float = 0.0  # wall_s plus the fsync of every output file, right after the command


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` (what a durable build must wait for), then the folders."""
    for root, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for root, _, _ in os.walk(path):
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (no psutil: GPU hosts may lack it)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _rss_poller(pid: int, stop: threading.Event, peaks: dict) -> None:
    while not stop.is_set():
        rss = anon = 0
        for p in _tree(pid):
            try:
                with open(f"/proc/{p}/status") as f:
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
    # Without GNU time (not every host has it), the peak is the poller's sampled tree RSS.
    gnu_time = Path("/usr/bin/time").exists()
    argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), "--", *c.argv] if gnu_time else list(c.argv)
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
        if rc == 0:
            fsync_tree(c.output)  # the durable timing: the same run, until its outputs are on disk
        durable = time.perf_counter() - t0
        poller.join()
    if rc != 0:
        raise SystemExit(f"{c.name} failed (exit {rc}) on {shape}:\n{log_file.read_text()[-3000:]}")
    if not keep:
        clean(c.output)
    maxrss_kib = int(rss_file.read_text().split()[-1]) if gnu_time else peaks["rss"] // 1024
    gib = 1 << 30
    return Run(c.name, shape, rnd, wall, maxrss_kib * 1024 / gib, peaks["rss"] / gib,
               peaks["anon"] / gib, tuple(round(x, 2) for x in load), rc, started, round(others, 2), durable)


def help_startup(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([str(VENV_BIN / "hubswap"), "--help"], check=True, capture_output=True, env=child_env())
        times.append(time.perf_counter() - t0)
    return times


PHASES = [  # (label, file suffix, function): cumulative times picked from one cProfile run
    ("whole command (main thread)", "hubswap/cli.py", "main"),
    ("resolve inputs", "hubswap/inputs.py", "resolve"),
    ("preflight (headers, configs, tokenizers)", "hubswap/preflight.py", "check_compatible"),
    ("merge (swap.merge)", "hubswap/swap.py", "merge"),
    ("  raw byte copies (os.copy_file_range), main thread", "~", "<built-in method posix.copy_file_range>"),
    ("  blends and casts, the main thread's share", "hubswap/swap.py", "_compute"),
    ("side files (config, tokenizer)", "hubswap/swap.py", "copy_side_files"),
    ("model card", "hubswap/pipeline.py", "write_card"),
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

    def waits(caller: str, fn_name: str = "result", module: str = "concurrent/futures/_base.py") -> float:
        """Main-thread time blocked on other threads (a future's result, a thread's join)."""
        return sum(ct for (f, _, fn), v in stats.items() if fn == fn_name and f.endswith(module)
                   for (cf, _, _), (_, _, _, ct) in v[4].items() if cf.endswith(caller))

    merge_at = next(i for i, (label, _) in enumerate(rows) if label.startswith("merge"))
    rows.insert(merge_at + 3, ("  waiting for the other threads' last chunks",
                               waits("hubswap/swap.py", "join", "threading.py")))
    rows.append(("waiting for the sha256 threads (inputs)", waits("hubswap/pipeline.py")))
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


# ------------------------------------------------------------------------------------------ main


SIZES = {  # --shape: the pair of each case
    "1b": {"bf16": experts.LLAMA_1B, "fp32": experts.LLAMA_1B_F32},
    "8b": {"bf16": experts.LLAMA_8B, "fp32": experts.LLAMA_8B_F32},
}
ALL = "floor,cp -r,hubswap,hubswap 1st,naive,mergekit"
DEFAULTS = {  # rounds, contenders, layer-count shapes, keep the experts, where the report goes
    "1b": dict(rounds=5, only=ALL, scale=True, keep=True, doc=DOC),
    # 8B: what fits about 9 minutes and 50 GB of disk with the experts made on the spot.
    "8b": dict(rounds=1, only="floor,cp -r,hubswap,hubswap 1st", scale=False, keep=False,
               doc=ROOT / "docs" / "PERFORMANCE-8B.md"),
}


def describe(shape: experts.Shape) -> str:
    lang = ("float32, so the bottom and top layers, the embeddings and the lm_head are cast to bf16"
            if shape.language_dtype == "float32" else "bfloat16")
    return (f"{shape.num_layers} layers, hidden {shape.hidden}, intermediate {shape.intermediate}, vocab "
            f"{shape.vocab}, {'tied' if shape.tied else 'untied'} embeddings, shards of "
            f"{shape.max_shard_bytes / 1e9:.0f} GB; task expert bfloat16 ({shape.num_bytes() / 1e9:.2f} GB), "
            f"language expert {lang} ({shape.num_bytes(shape.language_dtype) / 1e9:.2f} GB)")


def run_round(cs: list[Contender], shape: str, rnd: int, logs: Path, runs: list[Run]) -> None:
    k = (rnd - 1) % len(cs)
    for c in cs[k:] + cs[:k]:  # the order rotates each round
        r = measure(c, shape, rnd, logs)
        runs.append(r)
        log(f"{shape} round {rnd} {c.name:11s} {r.wall_s:7.2f} s  durable {r.durable_s:7.2f} s  "
            f"rss {r.maxrss_gib * 1024:5.0f} MiB  heap {r.anon_gib * 1024:5.0f} MiB  load {r.load}  "
            f"others {100 * r.others_busy:.0f}%")


def verify(cs: list[Contender], shape: str, logs: Path, runs: list[Run], once: set[str]) -> list[str]:
    """One run of each merger (also warms the page cache), outputs compared with hubswap's. The
    runs of the contenders in ``once`` are kept as their only timed run (round 0)."""
    by_name = {c.name: c for c in cs}
    ref = by_name.get("hubswap")
    if ref is None:
        raise SystemExit("verification needs hubswap among the contenders (or --no-verify)")
    log(f"{shape}: verify: one run of each merger, outputs compared with hubswap's ...")
    measure(ref, shape, 0, logs, keep=True)
    out = []
    for c in cs:
        if c.model_dir is None or c.name.startswith("hubswap"):
            continue
        r = measure(c, shape, 0, logs, keep=True)
        if c.name in once:
            runs.append(r)
            log(f"{shape} round 0 {c.name:11s} {r.wall_s:7.2f} s  durable {r.durable_s:7.2f} s  "
                f"rss {r.maxrss_gib * 1024:5.0f} MiB  (its only timed run: --once)")
        problems = compare(ref.model_dir, c.model_dir)
        n = len(tensor_ranges(ref.model_dir))
        if problems:
            out.append(f"{c.name}: **differs** from hubswap: " + "; ".join(problems[:8]))
        else:
            out.append(f"{c.name}: all {n} tensors equal hubswap's, byte for byte")
        log(f"  {out[-1]}")
        clean(c.output)
    clean(ref.output)
    return out or ["no other merger among the contenders"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SIZES), default="1b",
                   help="1b: Llama 3.2 1B pairs (10 GB of disk; default). 8b: Llama 3.1 8B pairs for hosts "
                        "with ~50 GB of disk and many cores: bf16 (16 GB per expert) and a 24-layer pair "
                        "with a float32 language expert (12.6 + 25.1 GB), made, timed and removed in turn")
    p.add_argument("--cases", default="bf16,fp32",
                   help="bf16 (both experts bf16), fp32 (float32 language expert); default both")
    p.add_argument("--rounds", type=int, help="timed rounds per contender (default 5; 1 at --shape 8b)")
    p.add_argument("--scale-rounds", type=int, default=3, help="rounds for the layer-count shapes (1b)")
    p.add_argument("--only", help=f"comma-separated contenders (default: {ALL}; at 8b, no naive or mergekit)")
    p.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    p.add_argument("--once", default="", metavar="NAMES",
                   help="contenders timed once, by their verification run, not in every round (e.g. "
                        "naive,mergekit: seconds each, far from the others, on a busy machine)")
    p.add_argument("--no-scale", action="store_true", help="skip the 16/32-layer shapes")
    p.add_argument("--keep-experts", action="store_true",
                   help="keep each 8B pair after its runs (they are removed by default, to fit the disk)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled hubswap run per case")
    p.add_argument("--doc", type=Path, help="the report (default docs/PERFORMANCE.md; docs/PERFORMANCE-8B.md at 8b)")
    p.add_argument("--no-doc", action="store_true", help="print the tables, write no report")
    p.add_argument("--quiet", type=float, default=0.25, metavar="FRACTION",
                   help="before each run, wait until other processes use less than this share of the "
                        "CPUs (default 0.25) ...")
    p.add_argument("--max-wait", type=float, default=15.0, metavar="S", help="... for at most S seconds (default 15)")
    args = p.parse_args(argv)
    d = DEFAULTS[args.shape]
    QUIET.update(busy=args.quiet, max_wait_s=args.max_wait)
    which = {w.strip() for w in (args.only or d["only"]).split(",")}
    rounds = args.rounds if args.rounds is not None else d["rounds"]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := [c for c in cases if c not in SIZES[args.shape]]:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {', '.join(SIZES[args.shape])}")
    keep = args.keep_experts or d["keep"]
    t_start = time.monotonic()

    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"disk free {shutil.disk_usage(CACHE).free / 1e9:.0f} GB; load {os.getloadavg()}; {dt.datetime.now():%H:%M:%S}")
    mk_exe = ensure_mergekit() if "mergekit" in which else None
    versions = venv_versions(VENV_BIN / "python", ["numpy", "safetensors"])
    if "naive" in which:
        versions.update(venv_versions(VENV_BIN / "python", ["torch", "transformers"]))
    if mk_exe:
        mv = venv_versions(MERGEKIT_VENV / "bin" / "python", ["mergekit", "torch", "transformers"])
        versions.update(mergekit=mv["mergekit"], mergekit_torch=mv["torch"],
                        mergekit_transformers=mv["transformers"])
        if not mv["torch"].endswith("+cpu"):
            raise SystemExit(f"the mergekit venv has torch {mv['torch']}, not the CPU build")
    logs = CACHE / "logs"
    runs: list[Run] = []
    case_results = []

    for case in cases:
        shape = SIZES[args.shape][case]
        t0 = time.monotonic()
        have = experts.pair_ready(shape, CACHE)
        need = (0 if have else shape.pair_bytes()) / 1e9 + shape.num_bytes() / 1e9 + 1  # experts, one output
        free = shutil.disk_usage(CACHE).free / 1e9
        if free < need:
            raise SystemExit(f"{shape.name}: need about {need:.0f} GB free under {CACHE}, have {free:.0f} GB")
        pair = experts.ensure_pair(shape, CACHE, log)
        log(f"{shape.name}: experts ready after {time.monotonic() - t0:.0f} s")
        cs = contenders(pair, CACHE / "out" / shape.name, mk_exe, which)
        _, read_b, written_b = floor_plan(pair)
        once = {w.strip() for w in args.once.split(",") if w.strip()}
        verification = ["not run (--no-verify)"] if args.no_verify else verify(cs, shape.name, logs, runs, once)
        timed = [c for c in cs if args.no_verify or c.name not in once]
        hub = next((c for c in cs if c.name == "hubswap"), None)
        if args.no_verify and hub is not None:  # untimed: fills hubswap's hash cache and the page cache
            measure(hub, shape.name, 0, logs)
        for rnd in range(1, rounds + 1):
            run_round(timed, shape.name, rnd, logs, runs)
        profile = []
        if hub is not None and not args.no_profile:
            profile = profile_hubswap(hub, logs)
            for label, sec in profile:
                log(f"{shape.name} profile {label:52s} {sec:6.2f} s")
        case_results.append({
            "case": case, "shape": shape.name, "description": describe(shape),
            "floor_read_gb": read_b / 1e9, "floor_written_gb": written_b / 1e9, "verification": verification,
            "mergekit_config": mergekit_config(pair) if mk_exe else None, "profile": profile,
        })
        if not keep:
            log(f"{shape.name}: removing the experts ({shape.pair_bytes() / 1e9:.0f} GB)")
            clean(pair)
        log(f"{shape.name}: done after {time.monotonic() - t0:.0f} s")

    # Scale: only the number of layers changes.
    scale_shapes = []
    if d["scale"] and not args.no_scale and "hubswap" in which:
        for shape in (experts.WIDE_16, experts.WIDE_32):
            spair = experts.ensure_pair(shape, CACHE, log)
            scs = [c for c in contenders(spair, CACHE / "out-scale", None, {"floor", "hubswap"})]
            scale_shapes.append(shape.name)
            for c in scs:  # untimed: fills the page cache and hubswap's hash cache, as for the main shape
                measure(c, shape.name, 0, logs)
            for rnd in range(1, args.scale_rounds + 1):
                run_round(scs, shape.name, rnd, logs, runs)

    help_s = help_startup(7) if "hubswap" in which else [float("nan")]

    import report

    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "size": args.shape,
        "cases": case_results, "scale_shapes": scale_shapes, "machine": machine(), "versions": versions,
        "help_s": help_s, "runs": [asdict(r) for r in runs], "quiet": dict(QUIET),
        "seconds": round(time.monotonic() - t_start),
    }
    results["verdicts"] = report.verdicts(results)
    suffix = "" if args.shape == "1b" else f"-{args.shape}"
    (CACHE / f"results{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    # Reading the numbers takes a person: bench/ANALYSIS.md (hand-written, dated) is included as is.
    analysis = ANALYSIS.read_text() + "\n" if args.shape == "1b" and ANALYSIS.exists() else ""
    text = report.render(results, analysis)
    print(text.split("## Where hubswap's time goes")[0])
    log(f"benchmark took {results['seconds']} s")
    if not args.no_doc:
        doc = args.doc or d["doc"]
        kept = report.clone_section(doc.read_text()) if doc.exists() else ""  # bench/clone.py's
        doc.write_text(report.with_section(text, kept) if kept else text)
        log(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
