"""One engine per process: each model's generations come from a child process of its own.

vLLM does not give all of its memory back when an ``LLM`` is deleted (vllm-project/vllm#21073,
open), and a build evaluates three or four models one after another; in one process the second
or third 8B model can run out of GPU memory. So ``generate_in_worker`` starts a child process per
model, on both backends and on every device, sends it the prompts, and gets back the rendered
prompts and the generations. The child's exit returns all of the engine's memory, whatever the
engine leaves behind. The parent keeps the results, the cache and the progress bar: the child
reports what it is doing and how many prompts are done, over a pipe.

A ``WorkerSession`` runs those children; with ``reuse`` (the sweep) a vLLM child outlives its
model and loads the next one's weights into its running engine when nothing else differs
(``WorkerSession``'s docstring says when), and stops for a fresh child otherwise.

Children are forked from a multiprocessing *forkserver* (``server.py``: how it starts, what it
preloads, where its output goes, how Ctrl-C reaches it). Each child leads a process group of its
own and ignores SIGINT: the parent stops it, with whatever it started, on Ctrl-C.

A child that dies (the kernel's out-of-memory killer, a signal, a crash in native code) is an
``EvaluationError`` naming the model and what it was doing; a Python exception in the child comes
back as the same error (a ``HubswapError``) or as an ``EvaluationError`` with its message, the
child's traceback having been printed to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubswap import interrupts
from hubswap.errors import EvaluationError, HubswapError
from hubswap.evaluate.server import engine_log_hint, server_context

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class WorkerEvent:
    """What a worker reports: ``stage`` (what it is doing), prompts ``done`` of ``total``; the last
    event of a model that finished carries ``peak_rss`` (the child's peak resident memory)."""

    model: str
    pid: int
    stage: str
    done: int = 0
    total: int = 0
    peak_rss: int | None = None


@dataclass(frozen=True)
class WorkerResult:
    rendered: list[str]
    generations: list  # of backends.Generation
    engine: dict[str, Any]
    peak_rss: int


def generate_in_worker(name: str, path: Path, prompts: list, *, backend: str, options: dict[str, Any],
                       seed: int, batch_size: int, max_new_tokens: int, dtype: str | None = None,
                       progress: bool = True,
                       on_event: Callable[[WorkerEvent], None] | None = None) -> WorkerResult:
    """Start a child process for model ``name`` at ``path``, generate for ``prompts`` there (one
    engine, every prompt in one call) and return what it made, once the child has exited.
    ``on_event`` sees every report."""
    with WorkerSession() as session:
        return session.generate(name, path, prompts, backend=backend, options=options, seed=seed,
                                batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype,
                                progress=progress, on_event=on_event)


class WorkerSession:
    """The worker processes of models evaluated in turn, one at a time.

    Without ``reuse`` (the build, ``hubswap eval``) every model gets a child of its own, which
    exits before the next one starts. With ``reuse`` (the sweep) a vLLM worker lives on after its
    model: the next model, when it differs from the running one only in its weights (the same
    engine settings and byte-identical config, generation config and tokenizer files, as a
    sweep's merges are), is loaded into the running engine (``VllmBackend.reload``: 0.04-0.4 s
    against 2-18 s for a new engine on the CPU test machines); anything else stops the worker and
    starts a fresh one. The parent still keeps results, cache and progress, and a worker that
    dies is still one error naming the model and what it was doing. Close the session (or use it
    as a context manager) to stop the last worker."""

    def __init__(self, *, reuse: bool = False, devices: str | None = None):
        self.reuse = reuse
        self.devices = devices  # the child's CUDA_VISIBLE_DEVICES (parallel.py); None: as inherited
        self._proc = None
        self._conn = None
        self._running: tuple | None = None  # what the running engine was started with, and its files

    def generate(self, name: str, path: Path, prompts: list, *, backend: str, options: dict[str, Any],
                 seed: int, batch_size: int, max_new_tokens: int, dtype: str | None = None,
                 progress: bool = True, on_event: Callable[[WorkerEvent], None] | None = None,
                 token_ids: bool = False) -> WorkerResult:
        """Generate for ``prompts`` with model ``name`` at ``path`` in a worker (the running one,
        when its engine can take the model's weights) and return what it made; the generated
        token ids stay in the worker unless ``token_ids`` (the records and the cache do not keep
        them)."""
        engine = {"backend": backend, "options": dict(options), "seed": seed, "batch_size": batch_size,
                  "dtype": dtype}
        running = (engine, _side_files(Path(path))) if self.reuse and backend == "vllm" else None
        reload = (running is not None and "config.json" in running[1] and running == self._running
                  and self._proc is not None and self._proc.is_alive())
        if not reload:
            self.close()
            self._start(name, backend)
        self._running = None  # until this model is done
        request = {"name": name, "path": str(path), "prompts": prompts, "reload": reload, **engine,
                   "devices": self.devices,
                   "max_new_tokens": max_new_tokens, "progress": progress,
                   "token_ids": token_ids, "log_level": logging.getLogger("hubswap").getEffectiveLevel()}
        log.debug("evaluating %s in worker process %d%s", name, self._proc.pid,
                 " (its running engine takes the new weights)" if reload else "")
        self._conn.send(request)
        result = self._wait(name, Path(path), len(prompts), progress, on_event, reload)
        self._running = running
        return result

    def close(self) -> None:
        """Stop the worker (its engine shut down, its memory returned) and wait for it to exit."""
        proc, conn, self._proc, self._conn, self._running = self._proc, self._conn, None, None, None
        if proc is None:
            return
        if proc.pid is None:  # never started (interrupted while starting)
            conn.close()
            return
        try:
            if proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    conn.send(None)
            proc.join()
        except BaseException:
            _stop(proc)
            raise
        finally:
            conn.close()
        _signal_group(proc.pid, signal.SIGKILL, alive=False)  # anything it started and left behind
        if proc.exitcode:
            log.debug("worker process %d exited %s", proc.pid, proc.exitcode)

    def kill(self) -> None:
        """Stop the worker now, from any thread (a generation waiting on it fails)."""
        proc = self._proc
        if proc is not None:
            _stop(proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self, name: str, backend: str) -> None:
        ctx = server_context(backend)
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child, args=(child_conn,), name=f"hubswap-eval-{name}", daemon=False)
        try:
            self._proc.start()
        except BaseException:  # Ctrl-C while the server forks it: nothing started to join
            self._proc, conn, self._conn = None, self._conn, None
            conn.close()
            raise
        finally:
            child_conn.close()

    def _wait(self, name: str, path: Path, total: int, progress: bool,
              on_event: Callable[[WorkerEvent], None] | None, reload: bool) -> WorkerResult:
        """Relay the worker's reports on one model until its result, its error or its death."""
        from tqdm.auto import tqdm

        proc, conn = self._proc, self._conn
        stage, done = ("loading the weights into the running engine" if reload else "starting its process"), 0
        result: WorkerResult | None = None
        error: dict | None = None
        bar = tqdm(total=total, desc=f"evaluating {name}", unit="prompt", disable=not progress)
        try:
            while result is None and error is None:
                ready = multiprocessing.connection.wait([conn, proc.sentinel], timeout=interrupts.POLL)
                if not ready:  # a Ctrl-C that library code swallowed (a weakref callback's) stops it here
                    interrupts.check()
                    continue
                if conn in ready or conn.poll():  # (after an exit: what it sent before it did)
                    try:
                        msg = conn.recv()
                    except EOFError:
                        break
                else:
                    break
                if "stage" in msg:
                    stage = msg["stage"]
                    bar.set_postfix_str(stage, refresh=False)
                if "done" in msg:
                    bar.update(msg["done"] - done)
                    done = msg["done"]
                result = msg.get("result", result)
                error = msg.get("error", error)
                if on_event is not None:
                    on_event(WorkerEvent(name, proc.pid, stage, done, total,
                                         result.peak_rss if "result" in msg else None))
        except BaseException as e:
            stage = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped while {stage}"
            self._proc = None
            _stop(proc)
            conn.close()
            raise
        finally:  # the bar ends at 100%, or says why not
            if result is not None:
                bar.set_postfix_str("", refresh=False)
            elif error is not None:
                bar.set_postfix_str(f"failed while {stage}", refresh=False)
            elif stage == "interrupted" or stage.startswith("stopped"):
                bar.set_postfix_str(stage, refresh=False)
            else:
                bar.set_postfix_str(f"its worker died while {stage}", refresh=False)
            bar.close()
        if result is not None:
            log.debug("evaluated %s in worker process %d (peak RSS %.2f GB)", name, proc.pid, result.peak_rss / 1e9)
            return result
        self.close()  # the worker has exited, or exits after its error
        if error is not None:
            raise _rebuild(error, name)
        kept = "Models evaluated before it are kept: a rerun takes cached experts from the cache"
        if stage == "starting its process":
            hint = (f"{engine_log_hint()}; a script that evaluates at import time needs "
                    "`if __name__ == \"__main__\":` (workers import the main module)")
        elif proc.exitcode == -signal.SIGKILL:  # what the kernel's out-of-memory killer sends
            hint = (f"{engine_log_hint()}; a worker killed by SIGKILL was most often stopped by the kernel's out-of-memory killer "
                    f"(see `dmesg`): lower [eval] batch_size, or [eval.vllm] max_model_len / gpu_memory_utilization. {kept}")
        else:  # a crash in native code (SIGSEGV, SIGABRT) or an exit of its own: the log says which
            hint = f"{engine_log_hint()}. {kept}"
        raise EvaluationError(
            f"evaluating {name} ({path}): its worker process died while {_doing(stage, done, total)} "
            f"({_how(proc.exitcode)})", hint=hint,
        )


def _stop(proc) -> None:
    """Stop a worker and whatever it started: each worker leads a process group of its own
    (``_child``), so vLLM's helper processes (its model-registry subprocess on every engine start,
    its engine core on a GPU) go with it instead of outliving hubswap."""
    if proc.is_alive():
        _signal_group(proc.pid, signal.SIGTERM)
        proc.join(10)
        if proc.is_alive():
            _signal_group(proc.pid, signal.SIGKILL)
    proc.join()
    _signal_group(proc.pid, signal.SIGKILL, alive=False)  # what is left of its group once it is gone


def _signal_group(pid: int, sig: int, *, alive: bool = True) -> None:
    """Signal the process group ``pid`` leads; while the worker is ``alive`` (not yet joined) and
    has no group yet (it makes one first thing), the worker itself. A joined worker's pid may
    already belong to another process: never signalled by pid then."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        if alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _side_files(path: Path) -> dict[str, bytes]:
    """What an engine reads from a model folder besides the weights: config, generation config
    (vLLM's sampling defaults and the stop tokens), tokenizer and chat template."""
    from hubswap.preflight import SIDE_FILES

    return {f: (path / f).read_bytes() for f in SIDE_FILES if (path / f).is_file()}


def _doing(stage: str, done: int, total: int) -> str:
    if stage == "generating":
        return f"generating ({done} of {total} prompts done)"
    return stage


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _rebuild(error: dict, name: str) -> HubswapError:
    """The child's error as the parent raises it."""
    from hubswap import errors

    cls = getattr(errors, error["type"], None)
    if isinstance(cls, type) and issubclass(cls, HubswapError):
        e = cls.__new__(cls)
        HubswapError.__init__(e, error["message"], hint=error["hint"])
        return e
    out_of_memory = "OutOfMemory" in error["type"] or "out of memory" in error["message"].lower()
    return EvaluationError(
        f"evaluating {name} failed while {error['stage']}: {error['type']}: {error['message']}",
        hint=f"{engine_log_hint()}; out of GPU memory: lower [eval] batch_size or [eval.vllm] "
        "gpu_memory_utilization / max_model_len" if out_of_memory else engine_log_hint(),
    )


# --- the child ------------------------------------------------------------------------------------


def _child(conn) -> None:
    """In the worker process: one engine, started for the first model (or each model's weights
    loaded into it, when the parent says so); every prompt of a model in one call, results back to
    the parent; exits when the parent says stop (``None``) or goes away."""
    # tqdm's default lock is a multiprocessing semaphore, which this process (ending in os._exit)
    # would leave to the parent's resource tracker to complain about; bars here draw nothing.
    # Ctrl-C is the parent's to handle (it stops this process): ignored here, as the server that
    # forked it ignores it (``_sigint_ignored``), whether it went to the process group or not.
    # A process group of its own: the parent stops it with everything it started (``_stop``).
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    stage = "waiting for its model"
    backend = None
    engine = None

    def send(**msg) -> None:
        conn.send(msg)

    try:
        while (req := conn.recv()) is not None:
            logging.basicConfig(level=req["log_level"], format="%(message)s", stream=sys.stderr)
            logging.getLogger("hubswap").setLevel(req["log_level"])
            from hubswap.evaluate.backends import Generation, open_backend

            engine = req["backend"]
            if req["devices"] is not None:  # before the engine touches the device (parallel.py)
                os.environ["CUDA_VISIBLE_DEVICES"] = req["devices"]
            if req["reload"]:
                stage = "loading the weights into the running engine"
                send(stage=stage)
                backend.reload(Path(req["path"]))
            else:
                stage = "starting the engine"
                send(stage=stage)
                backend = open_backend(engine, Path(req["path"]), options=req["options"], seed=req["seed"],
                                       batch_size=req["batch_size"], dtype=req["dtype"])
            stage = "generating"
            send(stage=stage, done=0)
            prompts = req["prompts"]
            generations = backend.generate(prompts, max_new_tokens=req["max_new_tokens"],
                                           progress=_relay(send) if req["progress"] else False)
            stage = "rendering the prompts"
            send(stage=stage, done=len(prompts))
            rendered = [backend.render(p) for p in prompts]
            args = {k: v for k, v in backend.engine_args.items() if k != "model"}
            gens = [Generation(g.text, g.finish_reason, g.prompt_tokens, g.tokens,
                               g.token_ids if req["token_ids"] else ()) for g in generations]
            send(stage="done", result=WorkerResult(rendered, gens, args, _peak_rss()))
            stage = "waiting for its next model"
        # The process exit frees the engine. Only vLLM's engine-core process (GPU) is stopped
        # first, so that its memory is free before the parent starts the next model; an
        # in-process engine's shutdown would only cost seconds.
        if backend is not None and engine == "vllm" and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            stage = "shutting the engine down"
            backend.close(release=False)
        conn.close()
        # Exit now: a normal exit waits for the engine's leftover threads (seconds, measured).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except EOFError:  # the parent went away
        pass
    except HubswapError as e:
        send(error={"type": type(e).__name__, "message": str(e), "hint": e.hint, "stage": stage})
    except BaseException as e:
        traceback.print_exc()
        try:
            send(error={"type": type(e).__name__, "message": str(e).splitlines()[0] if str(e) else "",
                        "hint": None, "stage": stage})
        except (OSError, ValueError):
            pass
    finally:
        conn.close()


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _relay(send):
    """A tqdm class for the engines' ``progress`` that draws nothing and reports each update."""
    from tqdm.auto import tqdm

    class Relay(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = open(os.devnull, "w")  # closed with the bar
            kwargs.pop("disable", None)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            # vLLM draws other bars first ("Rendering prompts", "Adding requests"): only the
            # generation's counts prompts done (reporting all of them ran the bar backwards)
            if self.desc.startswith(("Processed prompts", "generating")):
                send(done=int(self.n))
            return out

        def close(self):
            f = self.fp
            super().close()
            f.close()

    return Relay
