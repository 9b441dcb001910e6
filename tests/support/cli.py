"""``hubswap`` in a fresh process, as a user runs it, importing this checkout.

    r = run_hubswap("build", recipe, "--no-eval", "-o", out, cwd=tmp_path, hub=hub)
    assert r.returncode == 0, r.stderr

The process inherits the test session's environment (tests/conftest.py keeps every cache in a
temporary folder and drops ``HF_TOKEN``), with this checkout first on ``PYTHONPATH`` (so it never
imports another checkout's hubswap), ``HF_ENDPOINT`` set to the test Hub's URL when ``hub`` is given,
then ``env`` (a ``None`` value removes a variable). ``hubswap_argv`` and ``hubswap_env`` are the same
pieces for tests that need a ``Popen`` (to interrupt a build) or a wrapper command (strace).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support import engine_guard

REPO = Path(__file__).resolve().parents[2]


def hubswap_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "hubswap.cli", *map(str, args)]


def hubswap_env(env: Mapping[str, str | Path | None] | None = None, *, hub: Any = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    # a test without `engine` runs the CLI under the same guard as itself (tests/support/engine_guard.py)
    guard = [str(engine_guard.SITE)] if os.environ.get(engine_guard.TEST_VAR) else []
    out["PYTHONPATH"] = os.pathsep.join(p for p in (*guard, str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    if hub is not None:
        out["HF_ENDPOINT"] = hub.url
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = str(value)
    return out


def run_hubswap(*args: str | Path, cwd: str | Path | None = None, env: Mapping[str, str | Path | None] | None = None,
                hub: Any = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``hubswap ARGS`` to the end; stdout and stderr captured as text."""
    return subprocess.run(hubswap_argv(*args), cwd=cwd, env=hubswap_env(env, hub=hub), capture_output=True,
                          text=True, timeout=timeout)
