"""A user's mistakes and hostile surroundings, each through the real command (issue 25): folders
that cannot be written (a real read-only mount), bad flags, rebuilds, an unreachable Hub, wrong
diagnoses and machine paths in what is published.

The models are the numpy family (tests/support/numpy_family.py): real safetensors, no torch, so
everything here that evaluates nothing runs in the fast tier.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubswap.errors import EXIT_CODES
from tests.support.cli import run_hubswap
from tests.support.filesystems import read_only_mount
from tests.support.recipes import write_recipe


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """base/task/language of 6 layers, written with numpy (the tokenizer with `tokenizers`)."""
    from tests.support.numpy_family import make_family, write_tokenizer

    root = tmp_path_factory.mktemp("family")
    return make_family(root / "experts", write_tokenizer(root / "tokenizer"))


def one_line(r, code: int) -> str:
    """The run failed with ``code`` (a documented one) in one error line, maybe a hint, and no
    traceback; returns the error line."""
    assert code in EXIT_CODES
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


# -- item 1: a folder that cannot be written ------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "eval", "analyze", "sweep"])
def test_an_output_folder_on_a_read_only_filesystem_is_one_line(command, family, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", family, eval={"dataset": str(tmp_path / "no-mgsm")})
    with read_only_mount(tmp_path / "ro") as ro:
        out = ro / "out"
        args = {"build": ["build", recipe, "--no-eval"], "eval": ["eval", family["task"], "--limit", "2"],
                "analyze": ["analyze", recipe], "sweep": ["sweep", recipe, "--bottom", "1..2", "--top", "1"]}
        r = run_hubswap(*args[command], "-o", out, cwd=tmp_path)
        assert one_line(r, 11) == f"error: cannot write to {out}: its filesystem is read-only"
        assert "hint: write elsewhere: pass --output DIR" in r.stderr
        assert os.listdir(ro) == []


def test_lock_beside_a_recipe_on_a_read_only_filesystem_is_one_line(family, tmp_path):
    from tests.support.recipes import recipe_toml

    with read_only_mount(tmp_path / "ro", files={"r.toml": recipe_toml(family)}) as ro:
        r = run_hubswap("lock", ro / "r.toml", cwd=tmp_path)
        assert one_line(r, 11) == f"error: cannot write to {ro}: its filesystem is read-only"
        assert "hint: copy the recipe (and its lock) to a writable folder" in r.stderr
        assert os.listdir(ro) == ["r.toml"]


def test_a_small_read_only_filesystem_is_read_only_not_full(family, tmp_path):
    """The merge (2.2 MB) does not fit in 1 MB either: read-only is what the user must hear."""
    recipe = write_recipe(tmp_path / "r.toml", family)
    with read_only_mount(tmp_path / "ro", "1m") as ro:
        r = run_hubswap("build", recipe, "--no-eval", "-o", ro / "b", cwd=tmp_path)
        assert one_line(r, 11) == f"error: cannot write to {ro / 'b'}: its filesystem is read-only"
        assert "space" not in r.stderr


# -- item 3: --limit is a count -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "eval", "sweep", "demo"])
def test_a_negative_limit_is_refused_by_every_command(command, family, tmp_path):
    """A usage error, as `--limit x` is: argparse's line and exit 2, before anything runs."""
    recipe = write_recipe(tmp_path / "r.toml", family)
    args = {"build": ["build", recipe, "--no-eval"], "eval": ["eval", family["task"]],
            "sweep": ["sweep", recipe, "--bottom", "1", "--top", "1"], "demo": ["demo"]}
    r = run_hubswap(*args[command], "--limit", "-3", "-o", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (f"hubswap {command}: error: argument --limit: expected a number of "
                                         "questions (0 or more; 0 means all), not '-3'")
    assert not (tmp_path / "out").exists()


# -- item 5: a Hub that cannot be reached fails fast ----------------------------------------------


def _dead_port() -> int:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["refused", "unresolvable"])
@pytest.mark.parametrize("command", ["plan", "lock", "build", "eval"])
def test_an_unreachable_hub_is_one_line_within_seconds(command, where, tmp_path):
    import time

    from tests.support.recipes import hub_models

    endpoint = f"http://127.0.0.1:{_dead_port()}" if where == "refused" else "http://nonexistent.invalid"
    recipe = write_recipe(tmp_path / "r.toml", hub_models())
    args = {"plan": ["plan", recipe], "lock": ["lock", recipe], "build": ["build", recipe, "--no-eval"],
            "eval": ["eval", "org/task", "-o", tmp_path / "e"]}[command]
    start = time.monotonic()
    r = run_hubswap(*args, env={"HF_ENDPOINT": endpoint}, cwd=tmp_path)
    took = time.monotonic() - start
    error = one_line(r, 4)
    reason = "connection refused" if where == "refused" else "the name nonexistent.invalid does not resolve"
    assert error.startswith(f"error: cannot reach {endpoint}: {reason}"), error
    assert len(r.stderr.splitlines()) == 2, r.stderr  # the error and its hint, printed once; no retries
    assert took < 10, took  # the interpreter's start included; 73 s with the retries before
    assert ("pass --layers L to plan without the Hub" in r.stderr) == (command == "plan")
    assert not (tmp_path / "e").exists()


def test_plan_offline_names_layers_as_the_way_without_the_hub(tmp_path):
    from tests.support.recipes import hub_models

    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache: nothing to plan from
    r = run_hubswap("plan", write_recipe(tmp_path / "r.toml", hub_models()), env=offline, cwd=tmp_path)
    assert one_line(r, 4).startswith("error: offline mode is on (HF_HUB_OFFLINE=1): cannot fetch config.json of org/task@main")
    assert r.stderr.splitlines()[-1].endswith("; or pass --layers L to plan without the Hub")
    ok = run_hubswap("plan", tmp_path / "r.toml", "--layers", "6", env=offline, cwd=tmp_path)
    assert ok.returncode == 0 and "LL~T~L" in ok.stdout, ok.stderr


def test_eval_on_the_hub_dataset_without_the_hub_is_one_line(family, tmp_path):
    r = run_hubswap("eval", family["task"], "-o", tmp_path / "e", env={"HF_ENDPOINT": f"http://127.0.0.1:{_dead_port()}"})
    assert "connection refused" in one_line(r, 4)
    assert "--dataset DIR" in r.stderr


# -- item 4: one rule for replacing a build -------------------------------------------------------


def test_a_rebuild_replaces_the_previous_models_evaluation_with_it_and_says_so(family, tmp_path):
    """The previous build (records written by their own writers, tests/support/fixed_build.py) was
    evaluated: its generations lie in eval/. A --no-eval rebuild replaces the model, takes the
    previous model's evaluation away with it and says so in one line."""
    from tests.support.fixed_build import make_build

    out = make_build(tmp_path / "build")
    (out / "eval").mkdir()
    (out / "eval" / "merged.sw.jsonl").write_text('{"question": 0}\n')
    recipe = write_recipe(tmp_path / "r.toml", family)
    r = run_hubswap("build", recipe, "--no-eval", "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "replaced an evaluated build" in line]
    assert said == [f"replaced an evaluated build by an unevaluated one (--no-eval): {out} now holds the new model "
                    f"and no evaluation; the previous model's went with it "
                    f"({out / 'model' / 'hubswap' / 'eval_results.json'}, {out / 'eval'})"], r.stderr
    assert not (out / "eval").exists()
    assert not (out / "model" / "hubswap" / "eval_results.json").exists()
    assert (out / "model" / "model.safetensors.index.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == [".hubswap.lock", "model"]  # no old or staging folder left

    again = run_hubswap("build", recipe, "--no-eval", "-o", out, cwd=tmp_path)  # unevaluated over unevaluated
    assert again.returncode == 0 and "replaced an evaluated build" not in again.stderr, again.stderr


@pytest.mark.engine
def test_ctrl_c_during_the_evaluation_of_a_rebuild_leaves_no_old_generations(tiny_llama_vllm, mgsm_dir, tmp_path):
    """An evaluated build, then a rebuild of another swap interrupted once its model is in place
    (the evaluation has begun): model/ is the new model, unevaluated, and nothing of the previous
    model's evaluation is left beside it."""
    import signal
    import subprocess
    import time

    from tests.support.cli import hubswap_argv, hubswap_env

    ev = {"dataset": str(mgsm_dir), "languages": ["sw"], "prompt": "direct", "num_fewshot": 0, "max_new_tokens": 8,
          "compare": ["task"], "backend": "vllm", "limit": 2, "vllm": {"max_model_len": 1024}}
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama_vllm, eval=ev, gate={"must_beat": []})
    out = tmp_path / "build"
    first = run_hubswap("build", recipe, "-o", out, timeout=600)
    assert first.returncode == 0, first.stderr
    old = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "eval").iterdir()}
    assert "merged.sw.jsonl" in old
    old_record = (out / "model" / "hubswap" / "lock.json").read_text()

    write_recipe(tmp_path / "r.toml", tiny_llama_vllm, eval=ev, gate={"must_beat": []}, bottom=1)
    proc = subprocess.Popen(hubswap_argv("build", recipe, "-o", out), env=hubswap_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    record = out / "model" / "hubswap" / "lock.json"
    deadline = time.monotonic() + 300
    while not (record.is_file() and record.read_text() != old_record):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:] if proc.stderr else ""
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 130), err  # 0: it finished first (then its own evaluation is there)
    left = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "eval").iterdir()} \
        if (out / "eval").exists() else {}
    assert not any(old.get(name) == stat for name, stat in left.items()), (old, left)
    if proc.returncode == 130:
        assert not (out / "model" / "hubswap" / "eval_results.json").exists()


# -- item 7: the right diagnosis ------------------------------------------------------------------


def test_a_folder_that_is_not_a_model_is_said_to_be_one(family, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    recipe = write_recipe(tmp_path / "r.toml", dict(family, task=tmp_path / "notes"))
    r = run_hubswap("build", recipe, "--no-eval", "-o", tmp_path / "out", cwd=tmp_path)
    assert one_line(r, 3) == f"error: not a model folder (no config.json): task model {tmp_path / 'notes'}"
    assert "same base" not in r.stderr and "not compatible" not in r.stderr
    e = run_hubswap("eval", tmp_path / "notes", "-o", tmp_path / "e", cwd=tmp_path)
    assert one_line(e, 3) == f"error: {tmp_path / 'notes'} is not a model folder (no config.json)"
    assert not (tmp_path / "out").exists() and not (tmp_path / "e").exists()


def test_a_mistyped_path_in_plan_is_the_recipes_to_fix(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", dict(family, task=tmp_path / "tsk"))
    r = run_hubswap("plan", recipe, cwd=tmp_path)
    assert one_line(r, 3) == f"error: task model: {tmp_path / 'tsk'} is not a directory"
    assert "hint: check the recipe's `path`" in r.stderr and "--layers" not in r.stderr


def test_push_offline_says_publishing_needs_the_hub(family, tmp_path):
    out = tmp_path / "build"
    assert run_hubswap("build", write_recipe(tmp_path / "r.toml", family), "--no-eval", "-o", out).returncode == 0
    r = run_hubswap("push", out, "--repo", "me/x", env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_real_token"})
    assert one_line(r, 4) == "error: offline mode is on (HF_HUB_OFFLINE=1): publishing to me/x needs the Hub (checking the token)"
    assert "@None" not in r.stderr and "lock" not in r.stderr
    assert "hint: unset HF_HUB_OFFLINE to publish" in r.stderr


@pytest.mark.parametrize("command", ["card", "push"])
def test_card_and_push_of_a_folder_that_is_not_a_build_is_a_usage_error(command, family, tmp_path):
    r = run_hubswap(command, family["task"], cwd=tmp_path)
    assert one_line(r, 1) == f"error: {family['task']} is not a hubswap build: no hubswap/lock.json in it or in its model/ folder"
    r = run_hubswap(command, tmp_path / "nothere", cwd=tmp_path)
    assert one_line(r, 1) == f"error: {tmp_path / 'nothere'} does not exist"


def test_a_model_whose_config_disagrees_with_its_weights_is_refused_before_the_engine(family, tmp_path, mgsm_dir):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(family["task"], bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(config, hidden_size=128)))
    r = run_hubswap("eval", bad, "--dataset", mgsm_dir, "--limit", "1", "-o", tmp_path / "e", cwd=tmp_path)
    assert one_line(r, 3) == (f"error: {bad}: config.json does not describe its weights: config.json says hidden_size "
                              "128, but model.embed_tokens.weight has shape [512, 64]")
    assert "CUDA" not in r.stderr and len(r.stderr.splitlines()) == 2, r.stderr
    assert not (tmp_path / "e").exists()


# -- "Also": a swap without a task layer; a failed eval's folder ----------------------------------


@pytest.mark.parametrize("command", ["build", "validate", "plan"])
def test_a_swap_leaving_no_middle_layer_is_refused_as_sweep_refuses_it(command, family, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", family, bottom=2, top=2, transition=1)  # LL~~LL: no T layer
    args = {"build": ["build", recipe, "--no-eval", "-o", tmp_path / "out"], "validate": ["validate", recipe],
            "plan": ["plan", recipe]}[command]
    r = run_hubswap(*args, cwd=tmp_path)
    assert one_line(r, 2) == "error: recipe has 1 problem:"
    assert "= 6 leaves no middle layer of the model's 6 to the task expert" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_recipe_without_eval_languages_says_it_evaluates_english_and_an_unreachable_dataset_stops_before_the_merge(
        family, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", family)  # no [eval]: MGSM-en from the Hub
    r = run_hubswap("build", recipe, "-o", tmp_path / "out", env={"HF_ENDPOINT": f"http://127.0.0.1:{_dead_port()}"})
    assert "connection refused" in one_line(r, 4)
    assert r.stderr.splitlines()[0] == ("[eval] languages is not set: evaluating MGSM in en only (the default), not in "
                                        "the language expert's language; set e.g. languages = [\"sw\", \"en\"] "
                                        "(the target first)")
    assert not (tmp_path / "out").exists()  # refused before the merge


@pytest.mark.parametrize(("flag", "name"), [("--compare", "../../outside"), ("--compare", ".hidden"),
                                          ("--name", "a/b"), ("--name", "")])
def test_a_model_name_that_is_not_a_file_name_is_refused_before_anything_is_written(family, tmp_path, flag, name):
    """Names name the result files (NAME.LANG.jsonl): none may reach out of the output folder."""
    more = [flag, f"{name}={family['language']}"] if flag == "--compare" else [flag, name]
    r = run_hubswap("eval", family["task"], *more, "-o", tmp_path / "e" / "out", cwd=tmp_path)
    assert one_line(r, 7) == (f"error: {flag} {name!r}: a model's name names its result files, so it must be "
                              "letters, digits and . _ - (not first or last)")
    assert not (tmp_path / "e").exists()


def test_a_failed_eval_leaves_no_empty_folder(family, tmp_path):
    (tmp_path / "mgsm").mkdir()
    r = run_hubswap("eval", family["task"], "--dataset", tmp_path / "mgsm", "-o", tmp_path / "e")
    assert one_line(r, 7) == f"error: MGSM folder {tmp_path / 'mgsm'} has no en/ split"
    assert not (tmp_path / "e").exists()


# -- item 8: no path of the build machine in what is published -----------------------------------


def test_the_published_model_folder_names_no_path_of_the_build_machine(family, tmp_path):
    mgsm = tmp_path / "data" / "mgsm"
    mgsm.mkdir(parents=True)
    recipe = write_recipe(tmp_path / "r.toml", family, eval={"dataset": str(mgsm), "languages": ["sw", "en"]})
    assert str(family["task"]) in recipe.read_text() and str(mgsm) in recipe.read_text()  # absolute paths
    out = tmp_path / "build"
    r = run_hubswap("build", recipe, "--no-eval", "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert run_hubswap("card", out).returncode == 0
    texts = {p.relative_to(out): p.read_text() for p in (out / "model").rglob("*")
             if p.suffix in (".md", ".json", ".toml", ".svg") and p.name != "tokenizer.json"}
    assert Path("model/hubswap/recipe.toml") in texts and Path("model/README.md") in texts
    for name, text in texts.items():
        for machine_path in (str(tmp_path), str(family["task"].parent), "/tmp/"):
            assert machine_path not in text, (name, machine_path)
    recipe_copy = texts[Path("model/hubswap/recipe.toml")]
    assert 'dataset = "mgsm"' in recipe_copy and 'path = "task"' in recipe_copy
    assert recipe_copy.startswith("# hubswap: absolute paths of the build machine shortened to folder names")
