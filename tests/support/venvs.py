"""Virtual environments for the install tests, made with uv from PyPI (never a torch in them).

``core_venv()`` holds only hubswap's core dependencies (``[project] dependencies`` of
pyproject.toml) and is cached between runs under ``$HUBSWAP_TEST_CACHE`` (default
``~/.cache/hubswap-tests``), keyed by those dependencies, the interpreter and uv's version: the
first run downloads ~25 MB from PyPI (a few seconds), later runs reuse it.
``HUBSWAP_CORE_PYTHON`` picks its Python (``3.12``, ``3.13`` or a path; default: this one).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Never in a core venv, and never imported by the core commands.
HEAVY = ("torch", "transformers", "tokenizers", "vllm", "datasets", "evaluate", "accelerate", "lingua")
# uv must not fetch a Python of its own (no network beyond PyPI here) nor read a user's uv config.
UV_ENV = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}


def uv() -> str:
    """uv from the dev extra (beside this interpreter), else from PATH."""
    here = Path(sysconfig.get_path("scripts")) / "uv"
    found = str(here) if here.is_file() else shutil.which("uv")
    if not found:
        raise RuntimeError('uv not found: install the dev extra (pip install -e ".[dev]")')
    return found


def find_python(spec: str | None = None) -> str:
    """An interpreter for ``spec``: a path, a version such as ``3.12`` (PATH, then pyenv), or None
    for the interpreter running the tests."""
    spec = spec or os.environ.get("HUBSWAP_CORE_PYTHON")
    if not spec:
        return sys.executable
    if os.sep in spec:
        return spec
    candidates = [shutil.which(f"python{spec}")]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{spec}*/bin/python{spec}"), reverse=True)
    for cand in filter(None, candidates):
        # pyenv's shims exist on PATH but fail for a version that is not selected: try each one
        ok = subprocess.run([cand, "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
        if ok.returncode == 0:
            return cand
    raise RuntimeError(f"no Python {spec} found (tried PATH and {pyenv_root}/versions)")


def core_dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def python_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def cache_dir() -> Path:
    return Path(os.environ.get("HUBSWAP_TEST_CACHE") or Path.home() / ".cache" / "hubswap-tests")


@contextlib.contextmanager
def _locked(path: Path):
    """One builder per cached venv, also across pytest processes of other checkouts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_venv(path: Path, python: str, requirements: list[str], *, extra_args: tuple[str, ...] = ()) -> float:
    """A fresh venv at ``path`` with ``requirements`` installed by uv; returns the install seconds."""
    env = {**os.environ, **UV_ENV}
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([uv(), "venv", "-q", "--python", python, str(path)], check=True, env=env)
    t0 = time.monotonic()
    # --compile-bytecode: this environment sets PYTHONDONTWRITEBYTECODE, so without it every
    # command would compile huggingface_hub and pydantic again
    subprocess.run([uv(), "pip", "install", "-q", "-p", str(path / "bin" / "python"), "--compile-bytecode",
                    *extra_args, *requirements], check=True, env=env)
    return time.monotonic() - t0


def core_venv(python: str | None = None) -> Path:
    """The cached venv with hubswap's core dependencies only (hubswap itself comes from PYTHONPATH)."""
    python = find_python(python)
    deps = core_dependencies()
    uv_version = subprocess.run([uv(), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256(json.dumps([sorted(deps), python_version(python), uv_version]).encode()).hexdigest()[:16]
    venv = cache_dir() / f"core-{key}"
    marker = venv / "hubswap-core.json"
    with _locked(cache_dir() / f"core-{key}.lock"):
        if not marker.is_file():
            seconds = make_venv(venv, python, deps)
            marker.write_text(json.dumps({"python": python_version(python), "dependencies": deps,
                                          "install_seconds": round(seconds, 2)}, indent=2))
        marker.touch()  # last used
    # venvs of older dependency lists go once unused for a week (~90 MB each)
    for old in cache_dir().glob("core-*/hubswap-core.json"):
        if time.time() - old.stat().st_mtime > 7 * 86400:
            shutil.rmtree(old.parent, ignore_errors=True)
            old.parent.with_suffix(".lock").unlink(missing_ok=True)
    return venv


# lm-evaluation-harness itself, for tests/test_lm_eval_files.py. Its wheel holds the MGSM task files.
LM_EVAL = ("lm-eval==0.4.13", "psutil")
# accelerate (needed by lm-eval's `hf` model) requires torch: installed without its dependencies, so
# uv never fetches a CUDA torch; torch and transformers come from the interpreter running the tests.
LM_EVAL_NO_DEPS = ("accelerate==1.16.0",)


class PyPIUnreachable(RuntimeError):
    pass


def _pypi_reachable() -> str | None:
    """None when PyPI answers; else why not."""
    import urllib.request

    try:
        urllib.request.urlopen("https://pypi.org/simple/lm-eval/", timeout=15).close()
    except OSError as e:
        return str(e)
    return None


def lm_eval_venv() -> Path:
    """A cached venv with lm-eval 0.4.13 and its own dependencies, seeing this interpreter's
    site-packages last (a .pth file) for torch and transformers: a CPU torch is not on PyPI, and the
    tests' tiny models need nothing else. Raises ``PyPIUnreachable`` when it must be made and PyPI
    cannot be reached."""
    python = sys.executable
    shared = sysconfig.get_path("purelib")
    uv_version = subprocess.run([uv(), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256(json.dumps([LM_EVAL, LM_EVAL_NO_DEPS, python_version(python), shared, uv_version])
                         .encode()).hexdigest()[:16]
    venv = cache_dir() / f"lm-eval-{key}"
    marker = venv / "hubswap-lm-eval.json"
    with _locked(cache_dir() / f"lm-eval-{key}.lock"):
        if not marker.is_file():
            try:
                seconds = make_venv(venv, python, list(LM_EVAL))
                seconds += make_venv_add(venv, list(LM_EVAL_NO_DEPS), "--no-deps")
            except subprocess.CalledProcessError as e:
                shutil.rmtree(venv, ignore_errors=True)
                if (why := _pypi_reachable()) is not None:
                    raise PyPIUnreachable(f"PyPI is unreachable ({why})") from e
                raise
            site = subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            (Path(site) / "zz_hubswap_shared.pth").write_text(shared + "\n")
            marker.write_text(json.dumps({"python": python_version(python), "requirements": LM_EVAL + LM_EVAL_NO_DEPS,
                                          "shared_site_packages": shared, "install_seconds": round(seconds, 2)},
                                         indent=2))
        marker.touch()
    return venv


def make_venv_add(venv: Path, requirements: list[str], *args: str) -> float:
    """Install ``requirements`` into an existing venv; returns the seconds."""
    t0 = time.monotonic()
    subprocess.run([uv(), "pip", "install", "-q", "-p", str(venv / "bin" / "python"), "--compile-bytecode",
                    *args, *requirements], check=True, env={**os.environ, **UV_ENV})
    return time.monotonic() - t0
