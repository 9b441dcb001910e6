"""GPU smoke check (issue 13): the path of a real 8B build, on whatever GPU host this runs on.

    scripts/gpu-smoke.sh [--wheels .whl] [--mgsm DIR] [--work DIR] [--logs DIR] [--bench] [--keep] [--gpus N|auto]
    scripts/gpu-smoke.sh --tiny          # the same steps with a 6-layer shape on the CPU (tests)

Each step prints one line, ``smoke <step>: ...``, and writes its full output to ``<logs>/<step>.log``;
all the lines are printed again at the end, so the last lines of the output hold the whole story:

  env      Python, torch, the device, free disk, and that every library hubswap needs imports
  experts  a random Llama-3.1-8B-shaped pair (bf16, vocab 128256, 5 GB shards, untied), drawn on
           the GPU by bench/experts.py (the benchmark's maker, so ``--bench`` reuses the pair)
  copy     ``cp -r`` of one expert: the floor a merge is measured against (the copy is deleted)
  merge    ``hubswap build --no-eval`` twice (the first also hashes the inputs), against the copy;
           a tensor taken whole is checked byte for byte against its expert (output deleted)
  eval     a full build with the transformers backend: merge, MGSM sw + en (``--limit 16``) for the
           merged model and both experts on the device, the gate, the card
  load     ``AutoModelForCausalLM.from_pretrained(model, device_map="cuda")`` and one forward pass
  gpus     with ``--gpus N``: the eval step's build runs with ``--gpus N`` (the scheduler of
           ``hubswap/evaluate/parallel.py``: N // tensor_parallel_size workers, each pinned to its
           own devices), and when vLLM imports, ``hubswap eval`` of the merged model with vLLM,
           ``tensor_parallel_size=1`` and ``--gpus N``; its workers and shares are checked
  bench    with ``--bench``: ``bench/merge.py --shape 8b`` when bench/merge.py has that option,
           otherwise skipped (say so)

Heavy work runs in child processes (this one never imports torch), each with a time limit, so the
whole check fits a 10-minute device lease on a host like the H200 one (16 cores, 64 GB free disk):
the experts take 2 x 16 GB, and every other output is deleted as soon as it has been measured.
The Hub is never contacted (HF_HUB_OFFLINE=1, caches under the work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINES: list[str] = []
# What hubswap's merge, eval and load steps import (the modules, not the distributions).
NEEDED = ["torch", "transformers", "safetensors", "huggingface_hub", "pydantic", "numpy",
          "jinja2", "tqdm", "datasets", "evaluate", "tokenizers"]


class StepFailed(RuntimeError):
    pass


def say(step: str, text: str) -> None:
    line = f"smoke {step}: {text}"
    LINES.append(line)
    print(line, flush=True)


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _show(cmd: list[str]) -> str:
    return " ".join("<code>" if "\n" in c else c for c in cmd[:5]) + (" ..." if len(cmd) > 5 else "")


def run(step: str, cmd: list[str], *, logs: Path, env: dict, timeout: float, cwd: Path | None = None):
    """Run ``cmd`` with its output in ``logs/<step>.log``; (seconds, peak RSS of the largest
    process in its tree, in bytes, as the kernel reports it to wait4)."""
    log = logs / f"{step}.log"
    with log.open("a") as f:
        f.write(f"$ {_show(cmd)}\n")
        f.flush()
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd or ROOT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                _, status, usage = os.wait4(p.pid, 0)
                p.returncode = -9
                raise StepFailed(f"{_show(cmd)} ran past {timeout:.0f} s; see {log}")
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print("\n".join(f"    | {line}" for line in tail), flush=True)
        raise StepFailed(f"{_show(cmd)} exited {p.returncode}; see {log}")
    return seconds, usage.ru_maxrss * 1024


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def hubswap(*args: str) -> list[str]:
    return [sys.executable, "-m", "hubswap.cli", *args]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --- steps ---------------------------------------------------------------------------------------

ENV_CODE = """
import importlib, json, shutil, sys
found, missing = {}, []
for name in sys.argv[2:]:
    try:
        m = importlib.import_module(name)
        found[name] = getattr(m, "__version__", "?")
    except Exception as e:
        missing.append(f"{name} ({type(e).__name__}: {e})")
import torch
cuda = torch.cuda.is_available()
print(json.dumps({"python": sys.version.split()[0], "found": found, "missing": missing, "cuda": cuda,
                  "gpu": torch.cuda.get_device_name(0) if cuda else None,
                  "gpu_mem": torch.cuda.get_device_properties(0).total_memory if cuda else 0,
                  "free_disk": shutil.disk_usage(sys.argv[1]).free}))
"""

EXPERTS_CODE = """
import json, sys
from pathlib import Path
sys.path.insert(0, "bench")
import experts
spec = json.loads(sys.argv[1])
shape = experts.SHAPES[spec["name"]] if "name" in spec else experts.Shape(**spec["shape"])
root = experts.ensure_pair(shape, Path(sys.argv[2]))
print(json.dumps({"root": str(root), "expert_bytes": shape.num_bytes()}))
"""

CHECK_CODE = """
import json, sys
from pathlib import Path
from hubswap.preflight import read_header_file
model, task, language, mid = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
def raw(folder, name):
    shard = folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][name]
    head = read_header_file(shard)
    a, b = head[name]["data_offsets"]
    with open(shard, "rb") as f:
        f.seek(head["__data_start__"] + a)
        return head[name]["dtype"], head[name]["shape"], f.read(b - a)
for name, src in ((f"model.layers.{mid}.mlp.down_proj.weight", task), ("model.layers.0.input_layernorm.weight", language)):
    assert raw(model, name) == raw(src, name), f"{name} differs from {src.name}'s"
print("ok")
"""

LOAD_CODE = """
import json, sys, time
import torch
from transformers import AutoModelForCausalLM
device = sys.argv[2]
t0 = time.monotonic()
# device_map needs accelerate (on the GPU host); the --tiny check on a CPU machine loads without it.
placement = {"device_map": device} if device != "cpu" else {}
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="auto", **placement)
seconds = time.monotonic() - t0
ids = torch.tensor([[1, 17, 42, 99, 7, 3, 250, 11]], device=model.device)
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"seconds": seconds, "params": sum(p.numel() for p in model.parameters()),
                  "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
                  "finite": bool(torch.isfinite(logits).all()), "vocab": logits.shape[-1]}))
"""


def last_json(log: Path) -> dict:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise StepFailed(f"no result line in {log}")


RECIPE = """\
schema_version = 1
name = "{name}"

[models.task]
path = "{task}"

[models.language]
path = "{language}"

[swap]
bottom = {bottom}
top = {top}
transition = 1
non_layer = "language"
files_from = "task"
dtype = "bfloat16"

[eval]
dataset = "{mgsm}"
languages = {languages}
prompt = "{prompt}"
num_fewshot = {fewshot}
max_new_tokens = {max_new_tokens}
compare = ["task", "language"]
backend = "transformers"
batch_size = 16

[gate]
must_beat = []
min_accuracy = 0.0
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / ".smoke", help="scratch folder (default .smoke/)")
    p.add_argument("--logs", type=Path, help="where each step's full output goes (default <work>/logs)")
    p.add_argument("--mgsm", type=Path, help="MGSM in the juletxara/mgsm layout (default: .mgsm/, "
                   "$HUBSWAP_MGSM or shared/mgsm beside the checkout)")
    p.add_argument("--limit", type=int, help="questions per language (default 16; --tiny 2)")
    p.add_argument("--tiny", action="store_true", help="a 6-layer shape on the CPU: checks the script, not a GPU")
    p.add_argument("--bench", action="store_true", help="also run bench/merge.py --shape 8b, if it has that option")
    p.add_argument("--bench-args", default="--shape 8b", help="arguments for bench/merge.py (default: --shape 8b)")
    p.add_argument("--keep", action="store_true", help="keep the experts and the build")
    p.add_argument("--gpus", help="also evaluate through [eval] gpus: N devices, or auto (--tiny: N CPU workers)")
    a = p.parse_args(argv)
    work = a.work.resolve()
    logs = (a.logs or work / "logs").resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # With --bench the pair is made where bench/merge.py caches it, so the benchmark reuses it.
    expert_cache = (ROOT / "bench" / ".cache") if a.bench and not a.tiny else work
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HUBSWAP_CACHE", None)  # every run evaluates afresh: a cached expert would skip its engine
    if a.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
    device = "cpu" if a.tiny else "cuda"
    pair_root: Path | None = None
    status = 0
    step = "env"
    try:
        # env ------------------------------------------------------------------------------------
        mgsm = a.mgsm or next((d for d in (ROOT / ".mgsm", _find_mgsm()) if d and (d / "en").is_dir()), None)
        if mgsm is None or not (Path(mgsm) / "sw").is_dir():
            raise StepFailed("no MGSM copy: pass --mgsm DIR (the juletxara/mgsm layout, e.g. ../shared/mgsm)")
        run(step, python(ENV_CODE, str(work), *NEEDED), logs=logs, env=env, timeout=120)
        info = last_json(logs / "env.log")
        if info["missing"]:
            raise StepFailed("cannot import " + "; ".join(info["missing"])
                             + " (carry them as wheels: scripts/gpu-smoke.sh --wheels DIR, see its header)")
        if not a.tiny and not info["cuda"]:
            raise StepFailed("torch sees no CUDA device (use --tiny for the CPU check)")
        spec = ({"shape": dict(name="tiny-smoke", num_layers=6, hidden=128, intermediate=256, heads=4, kv_heads=2,
                               vocab=128256, tied=False, max_shard_bytes=20_000_000)}
                if a.tiny else {"name": "llama-3.1-8b"})
        need = 0 if a.tiny else 50e9  # two experts plus one copy or build at a time, with room
        gpu = f"{info['gpu']} ({gb(info['gpu_mem'])})" if info["cuda"] else "no GPU (--tiny: CPU)"
        say(step, f"python {info['python']}, torch {info['found']['torch']}, transformers "
                  f"{info['found']['transformers']}, huggingface_hub {info['found']['huggingface_hub']}; "
                  f"{gpu}; {gb(info['free_disk'])} free in {work}; {os.cpu_count()} cores")
        if info["free_disk"] < need:
            raise StepFailed(f"{gb(info['free_disk'])} free in {work}; the 8B check needs {gb(need)}")

        # experts --------------------------------------------------------------------------------
        step = "experts"
        secs, _ = run(step, python(EXPERTS_CODE, json.dumps(spec), str(expert_cache)), logs=logs, env=env, timeout=300)
        made = last_json(logs / "experts.log")
        pair_root = Path(made["root"])
        task, language = pair_root / "task", pair_root / "language"
        size = du(task)
        say(step, f"2 x {gb(size)} (bf16, vocab 128256) in {secs:.1f} s on {device}, {pair_root}")
        num_layers = json.loads((task / "config.json").read_text())["num_hidden_layers"]

        # copy -----------------------------------------------------------------------------------
        step = "copy"
        copy = work / "cp-copy"
        shutil.rmtree(copy, ignore_errors=True)
        subprocess.run(["sync"], check=False)
        cp_secs, _ = run(step, ["cp", "-r", str(task), str(copy)], logs=logs, env=env, timeout=300)
        shutil.rmtree(copy)
        say(step, f"cp -r of one expert: {cp_secs:.2f} s ({size / cp_secs / 1e9:.2f} GB/s, page cache warm)")

        # merge ----------------------------------------------------------------------------------
        step = "merge"
        fields = dict(task=task, language=language, mgsm=Path(mgsm).resolve(),
                      bottom=1 if a.tiny else 5, top=1 if a.tiny else 2)
        if a.tiny:
            fields.update(languages='["sw"]', prompt="direct", fewshot=0, max_new_tokens=4)
        else:
            fields.update(languages='["sw", "en"]', prompt="native-cot", fewshot=8, max_new_tokens=256)
        recipe = work / "smoke.toml"
        recipe.write_text(RECIPE.format(name="smoke", **fields))
        out = work / "build-noeval"
        times, peaks = [], []
        for _ in range(2):
            subprocess.run(["sync"], check=False)
            s, rss = run(step, hubswap("build", str(recipe), "--no-eval", "-o", str(out)), logs=logs, env=env,
                         timeout=300)
            times.append(s)
            peaks.append(rss)
        mid = num_layers // 2
        run(step, python(CHECK_CODE, str(out / "model"), str(task), str(language), str(mid)), logs=logs, env=env,
            timeout=120)
        written = du(out / "model")
        shutil.rmtree(out)
        say(step, f"hubswap build --no-eval: 1st {times[0]:.2f} s (hashes the inputs), 2nd {times[1]:.2f} s = "
                  f"{times[1] / cp_secs:.2f}x cp -r; peak RSS {max(peaks) / 1e6:.0f} MB; {gb(written)} written; "
                  f"layer {mid} and layer 0's norm equal their experts' bytes")

        # eval -----------------------------------------------------------------------------------
        step = "eval"
        limit = a.limit or (2 if a.tiny else 16)
        build = work / "build"
        gpus = ["--gpus", a.gpus] if a.gpus else []
        secs, rss = run(step, hubswap("build", str(recipe), "-o", str(build), "--limit", str(limit), *gpus),
                        logs=logs, env=env, timeout=480)
        res = json.loads((build / "model" / "hubswap" / "eval_results.json").read_text())
        models = res["models"]
        engines = {m["engine"]["device"] for m in models.values() if m.get("engine")}
        if engines != {device}:
            raise StepFailed(f"the models were evaluated on {engines}, not {device}")
        accs = ", ".join(f"{name} " + "/".join(f"{lang['accuracy']:.3f}" for lang in m["languages"].values())
                         for name, m in models.items())
        n = {lang: d["n"] for lang, d in models["merged"]["languages"].items()}
        say(step, f"full build (transformers on {device}, {fields['prompt']} {fields['fewshot']}-shot, "
                  f"max_new_tokens {fields['max_new_tokens']}): {secs:.1f} s for {len(models)} models x {n}; "
                  f"accuracy {accs}; gate {'passed' if res['gate']['passed'] else 'failed'}; "
                  f"peak RSS {rss / 1e9:.2f} GB")

        if a.gpus:
            _gpus_step(a, res, build, logs, env, limit, Path(mgsm))

        # load -----------------------------------------------------------------------------------
        step = "load"
        run(step, python(LOAD_CODE, str(build / "model"), device), logs=logs, env=env, timeout=300)
        loaded = last_json(logs / "load.log")
        if not loaded["finite"]:
            raise StepFailed("the loaded model's logits are not finite")
        how = f'device_map="{device}"' if device != "cpu" else "on the CPU"
        say(step, f"from_pretrained({how}) {loaded['seconds']:.1f} s: "
                  f"{loaded['params'] / 1e9:.2f} B params, {loaded['dtype']} on {loaded['device']}, "
                  f"logits finite over {loaded['vocab']} tokens")
        if not a.keep:
            shutil.rmtree(build)

        # bench ----------------------------------------------------------------------------------
        if a.bench:
            step = "bench"
            helptext = subprocess.run([sys.executable, "bench/merge.py", "--help"], cwd=ROOT, env=env,
                                      capture_output=True, text=True).stdout
            if "--shape" not in helptext:
                say(step, "skipped: bench/merge.py has no --shape option")
            elif a.tiny:
                say(step, f"--tiny: would run bench/merge.py {a.bench_args}")
            else:
                secs, _ = run(step, [sys.executable, "bench/merge.py", *a.bench_args.split()], logs=logs, env=env,
                              timeout=max(60, 570 - (time.monotonic() - started)))
                say(step, f"bench/merge.py {a.bench_args}: {secs:.1f} s; its table is the end of {logs / 'bench.log'}")
                tail = (logs / "bench.log").read_text(errors="replace").splitlines()[-15:]
                LINES.extend(f"  {line}" for line in tail)
    except StepFailed as e:
        say(step, f"FAILED: {e}")
        status = 1
    finally:
        if not a.keep:
            if pair_root is not None:
                shutil.rmtree(pair_root, ignore_errors=True)
                if pair_root.parent.is_dir() and not any(pair_root.parent.iterdir()):
                    pair_root.parent.rmdir()
            for d in ("cp-copy", "build-noeval", "build", "hf"):
                shutil.rmtree(work / d, ignore_errors=True)
    say("done", f"{'ok' if status == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s; logs in {logs}")
    print("\n--- summary ---\n" + "\n".join(LINES), flush=True)
    return status


def _gpus_step(a, res: dict, build: Path, logs: Path, env: dict, limit: int, mgsm: Path) -> None:
    """``--gpus``: the build's evaluation went through the scheduler; vLLM with
    ``tensor_parallel_size=1`` through it too, when vLLM is there."""
    step = "gpus"
    workers = res.get("workers")
    shares = {m: v.get("shares") for m, v in res["models"].items() if v.get("shares")}
    text = (f"build --gpus {a.gpus}: {workers['count']} workers on {workers['devices']}, shares {shares}"
            if workers else f"build --gpus {a.gpus}: one worker (one device)")
    if a.tiny:  # (the tiny shape's heads are too small for vLLM's CPU attention)
        say(step, text + f"; --tiny: would run vLLM tensor_parallel_size=1 --gpus {a.gpus}")
        return
    probe = subprocess.run([sys.executable, "-c", "import vllm"], env=env, capture_output=True)
    if probe.returncode != 0:
        say(step, text + "; vLLM: skipped (not installed)")
        return
    out = build / "eval-vllm"
    secs, _ = run(step, hubswap("eval", str(build / "model"), "--backend", "vllm", "--vllm", "tensor_parallel_size=1",
                                "--gpus", a.gpus, "--dataset", str(mgsm), "--languages", "sw", "--limit", str(limit),
                                "--no-progress", "-o", str(out)), logs=logs, env=env, timeout=300)
    got = json.loads((out / "eval_results.json").read_text())
    w = got.get("workers")
    say(step, text + f"; vLLM tensor_parallel_size=1 --gpus {a.gpus}: {secs:.1f} s, "
                     f"{w['count'] if w else 1} worker(s), shares {got['models']['model'].get('shares')}, "
                     f"accuracy {got['models']['model']['languages']['sw']['accuracy']:.3f}")


def _find_mgsm() -> Path | None:
    """$HUBSWAP_MGSM, else a ``shared/mgsm`` beside the working folder or the checkout."""
    if env := os.environ.get("HUBSWAP_MGSM"):
        return Path(env)
    for start in (Path.cwd(), ROOT):
        for d in (start, *start.parents):
            if (d / "shared" / "mgsm" / "en").is_dir():
                return d / "shared" / "mgsm"
    return None


if __name__ == "__main__":
    sys.exit(main())
