"""The declared Python API (``hubswap/__init__.py``): exactly these names, importable, and light."""

from __future__ import annotations

import subprocess
import sys

import hubswap

API = {
    "__version__", "load_recipe", "build", "BuildOptions", "BuildResult", "layer_map", "run_evaluation",
    "read_eval_results", "EvalResults", "analyze", "sweep", "publish", "HubswapError",
}


def test_the_public_names_are_exactly_the_declared_api():
    assert set(hubswap.__all__) == API
    assert set(dir(hubswap)) == API


def test_every_public_name_imports_and_is_the_defining_modules_object():
    from hubswap.errors import HubswapError
    from hubswap.pipeline import build

    ns: dict = {}
    exec("from hubswap import *", ns)
    assert API - {"__version__"} <= set(ns)
    assert ns["build"] is build and callable(ns["build"])
    assert ns["HubswapError"] is HubswapError
    for name in API - {"__version__"}:
        assert callable(getattr(hubswap, name)), name


def test_an_unknown_name_is_an_attribute_error():
    try:
        hubswap.merge_everything  # noqa: B018
    except AttributeError as e:
        assert "merge_everything" in str(e)
    else:
        raise AssertionError("hubswap.merge_everything resolved")


def test_import_hubswap_and_the_cli_stay_light():
    # A fresh interpreter: no test's imports leak in. The CLI answers --help without torch.
    code = ("import sys, hubswap, hubswap.cli; from hubswap import build, load_recipe, layer_map; "
            "print(sorted(m for m in ('torch', 'vllm', 'datasets', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
