"""hubswap sweep --ray: the configurations as tasks on a real local Ray cluster (``ray start
--head``), with the real vLLM engine on the CPU. The cluster's result is the single machine's,
a task whose worker is killed mid-way is retried, a rerun resumes from the node's cache, and a
driver without Ray names the extra."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import REPO, hubswap_argv, hubswap_env, run_hubswap
from tests.support.recipes import write_recipe

EVAL = {"languages": ["sw"], "prompt": "direct", "num_fewshot": 0, "max_new_tokens": 4, "backend": "vllm", "limit": 4}
GRID = ["--bottom", "1..2", "--top", "1"]


def test_without_ray_the_driver_names_the_extra(tmp_path):
    # A Python where `import ray` fails as it does where the extra is not installed.
    shadow = tmp_path / "no-ray"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    models = {role: tmp_path / role for role in ("base", "task", "language")}  # (not read)
    recipe = write_recipe(tmp_path / "r.toml", models, eval=EVAL, gate={"must_beat": []})
    r = run_hubswap("sweep", recipe, *GRID, "--ray", env={"PYTHONPATH": os.pathsep.join([str(shadow), str(REPO)])})
    assert r.returncode == 7, r.stderr
    assert "--ray needs Ray, which is not installed" in r.stderr and 'pip install "hubswap[ray]"' in r.stderr
    assert "Traceback" not in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_first_task(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen running a configuration, a few seconds into it."""
    import psutil

    while not stop.is_set():
        for p in psutil.process_iter(["pid", "cmdline"]):
            if (p.info["cmdline"] or [""])[0].startswith("ray::score_on_node"):
                time.sleep(3)  # mid-way: the task has started its worker and engine
                os.kill(p.info["pid"], signal.SIGKILL)
                killed.append(p.info["pid"])
                return
        time.sleep(0.2)


def _files(folder: Path) -> dict[str, int]:
    """Each file's name and modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


def _stop_cluster(head: subprocess.Popen) -> None:
    """The head node and every process it started (GCS, raylet, Ray workers), by their ids."""
    import psutil

    procs = [psutil.Process(head.pid)]
    procs += procs[0].children(recursive=True)
    head.terminate()
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


@pytest.mark.slow
def test_a_sweep_on_a_ray_cluster_equals_the_single_machine_sweep(tiny_llama_vllm, mgsm_dir, tmp_path):
    pytest.importorskip("ray")
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama_vllm, bottom=2, top=1, transition=0,
                          eval={**EVAL, "dataset": str(mgsm_dir)}, gate={"must_beat": []})
    times = {}
    t = time.perf_counter()
    one = run_hubswap("sweep", recipe, *GRID, "-o", tmp_path / "one", "--recipe-out", tmp_path / "one.toml",
                      env={"HUBSWAP_CACHE": tmp_path / "cache-one"}, timeout=600)
    times["one process"] = time.perf_counter() - t
    assert one.returncode == 0, one.stderr

    # A real cluster: a head node of its own (one CPU: one configuration at a time), its own cache.
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
    # (Ray 2.60 clusters started by `ray start` want a token; this one is local and disposable.)
    env = hubswap_env({"HUBSWAP_CACHE": tmp_path / "cache-ray", "RAY_ADDRESS": None, "RAY_AUTH_MODE": "disabled"})
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_task, args=(killed, stop), daemon=True)
    try:
        killer.start()
        t = time.perf_counter()
        ray = subprocess.run(
            hubswap_argv("sweep", recipe, *GRID, "-o", tmp_path / "ray", "--recipe-out", tmp_path / "ray.toml",
                         "--ray", f"127.0.0.1:{port}"),
            env=env, capture_output=True, text=True, timeout=900)
        times["Ray cluster"] = time.perf_counter() - t
        # A rerun on the same cluster resumes from the node's cache: every configuration's
        # generations are found there, none generated (and cached) again.
        cached = _files(tmp_path / "cache-ray" / "eval")
        again = subprocess.run(
            hubswap_argv("sweep", recipe, *GRID, "-o", tmp_path / "again", "--recipe-out", tmp_path / "again.toml",
                         "--ray", f"127.0.0.1:{port}"),
            env=env, capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        _stop_cluster(head)
        shutil.rmtree(temp, ignore_errors=True)
    print(", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    assert ray.returncode == 0, ray.stderr[-3000:]
    assert killed, "no configuration task was seen running"
    assert "configurations: 100%" in ray.stderr  # the cluster-wide progress bar

    # The same ranking, choice and held-out score; the same answers, question by question.
    a, b = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in ("one", "ray"))
    for d in (a, b):
        d.pop("heldout_cost")
        for c in d["configs"]:
            c.pop("cost")
    assert a == b

    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "again" / "sweep.json").read_text())
    first = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert len(cached) == 5 and _files(tmp_path / "cache-ray" / "eval") == cached  # not one written again
    for d in (first, rerun):
        d.pop("heldout_cost")
        for c in d["configs"]:
            c.pop("cost")
    assert rerun == first
    assert (tmp_path / "one.toml").read_text() == (tmp_path / "ray.toml").read_text()
    files = sorted(p.name for p in (tmp_path / "one" / "eval").glob("*.jsonl"))
    assert files == sorted(p.name for p in (tmp_path / "ray" / "eval").glob("*.jsonl"))
    assert len(files) == 5  # task, language, two configurations, the winner's held-out half
    for f in files:
        assert (tmp_path / "one" / "eval" / f).read_text() == (tmp_path / "ray" / "eval" / f).read_text(), f
