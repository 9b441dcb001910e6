"""Many engines at once on one machine: ``[eval] gpus`` shared out among worker processes.

With G devices and engines that need ``tensor_parallel_size`` T devices each, ⌊G/T⌋ workers run
at once, each a ``WorkerSession`` whose child process sees only its own devices
(``CUDA_VISIBLE_DEVICES``, set in the child before its engine starts). The work is shared out in
rounds: as long as there are at least as many models as workers, each model is one job (whole,
as today); the models left over (fewer than the workers) have their prompts split into
contiguous shares, one per free worker (data parallel), and each model's generations are put
back together in prompt order. Decoding is greedy and every prompt is rendered alone, so a
share's answers are the answers a single engine gives (``tests/test_eval_parallel.py`` checks
this question by question on the CPU).

Devices are counted without importing torch in this process: ``$CUDA_VISIBLE_DEVICES`` when set,
else ``nvidia-smi -L``. On a machine without a GPU a "device" is a worker slot: ``gpus = 2`` runs
two CPU engines at once (each takes the cores it gets; on a small machine that is no faster).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hubswap import interrupts
from hubswap.errors import EvaluationError

log = logging.getLogger(__name__)


def parse_gpus(text: str) -> int | str:
    """``--gpus``: a number of devices (at least 1) or "auto"."""
    import argparse

    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of devices (1 or more) or auto, not {text!r}")
    return n


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them ([] when none)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def device_groups(gpus: int | str | None, tensor_parallel: int = 1,
                  visible: list[str] | None = None) -> list[str | None]:
    """One entry per worker: the ``CUDA_VISIBLE_DEVICES`` value it runs with (None: not pinned).

    ``gpus`` None: one worker, not pinned (what the engine sees). Without a GPU, ``gpus`` workers
    ("auto": one), not pinned."""
    if gpus is None:
        return [None]
    visible = visible_gpus() if visible is None else visible
    if not visible:
        return [None] * (1 if gpus == "auto" else int(gpus))
    if gpus != "auto" and int(gpus) > len(visible):
        raise EvaluationError(f"[eval] gpus = {gpus}, but this machine shows {len(visible)} GPU(s) "
                              f"({','.join(visible)})", hint='set gpus = "auto" to use every visible GPU')
    usable = visible if gpus == "auto" else visible[: int(gpus)]
    workers = len(usable) // tensor_parallel
    if workers == 0:
        raise EvaluationError(f"tensor_parallel_size = {tensor_parallel} needs {tensor_parallel} GPUs per engine, "
                              f"but [eval] gpus gives {len(usable)}", hint="raise gpus, or lower tensor_parallel_size")
    if workers * tensor_parallel < len(usable):
        log.warning("%d of %d GPUs stay idle: tensor_parallel_size %d does not divide them", len(usable) - workers *
                    tensor_parallel, len(usable), tensor_parallel)
    return [",".join(usable[w * tensor_parallel:(w + 1) * tensor_parallel]) for w in range(workers)]


@dataclass(frozen=True)
class Job:
    """Prompts ``start:stop`` of one model's list."""

    model: str
    start: int
    stop: int


def plan_jobs(sizes: dict[str, int], workers: int) -> list[Job]:
    """The jobs, in the order they are handed out: whole models while a round has one per worker,
    then the rest (fewer models than workers) split into contiguous shares, every worker busy."""
    names = [n for n, k in sizes.items() if k > 0]
    whole = len(names) - len(names) % workers if workers > 1 else len(names)
    jobs = [Job(n, 0, sizes[n]) for n in names[:whole]]
    rest = names[whole:]
    for i, n in enumerate(rest):
        shares = workers // len(rest) + (1 if i < workers % len(rest) else 0)
        shares = min(shares, sizes[n])
        bounds = [sizes[n] * s // shares for s in range(shares + 1)]
        jobs += [Job(n, a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    return jobs


def run_jobs(jobs: list[Job], groups: list[str | None], work: Callable[[Job, object], object],
             make_session: Callable[[str | None], object]) -> dict[Job, object]:
    """Run ``work(job, session)`` for every job on ``len(groups)`` threads, each with its own
    session (``make_session(devices)``); returns each job's result. The first error stops the
    others' workers and is raised."""
    todo = list(jobs)
    lock = threading.Lock()
    results: dict[Job, object] = {}
    errors: list[BaseException] = []
    sessions = [make_session(g) for g in groups]

    def loop(session) -> None:
        try:
            while True:
                with lock:
                    if errors or not todo:
                        return
                    job = todo.pop(0)
                out = work(job, session)
                with lock:
                    results[job] = out
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            with lock:
                errors.append(e)
            for s in sessions:  # a failure stops every worker: nothing keeps running unseen
                s.kill()
        finally:
            session.close()

    threads = [threading.Thread(target=loop, args=(s,), name=f"hubswap-eval-{i}", daemon=True)
               for i, s in enumerate(sessions)]
    for t in threads:
        t.start()
    try:
        interrupts.join(threads)
    except BaseException:
        for s in sessions:
            s.kill()
        raise
    if errors:
        raise errors[0]
    return results
