"""Every command against a matrix of hostile situations, as real processes: none may print a
traceback or exit with a code outside ``errors.EXIT_CODES`` (issue 25, "a systematic sweep").

The situations: a missing path, a path that cannot be read as what it should be (a folder where a
file belongs, bytes that are not text), a folder that is not a model (or not a build), an output on
a read-only filesystem (a real tmpfs remounted ``ro``; root only, else those cases skip), no network
(the Hub endpoint refuses connections), offline mode (``HF_HUB_OFFLINE=1``) and bad flags. The
commands are those ``hubswap --help`` lists: a command added without a row here fails
``test_every_command_is_swept``. Every case fails before an engine would start, so this runs in the
fast tier (the engine guard refuses torch and vLLM in these processes).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from hubswap.errors import EXIT_CODES
from tests.support.cli import run_hubswap
from tests.support.filesystems import read_only_mount
from tests.support.recipes import hub_models, recipe_toml, write_recipe

SITUATIONS = ("missing", "unreadable", "not-a-model", "read-only", "no-network", "offline", "bad-flags")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The paths every case draws on: recipes (local, Hub, of a non-model), a finished build, a
    folder that is no model, a binary file, and a read-only mount holding a recipe and a build."""
    from tests.support.numpy_family import make_family, write_tokenizer

    root = tmp_path_factory.mktemp("world")
    family = make_family(root / "experts", write_tokenizer(root / "tokenizer"))
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a model")
    (root / "garbage.toml").write_bytes(b"\xff\xfe\x00binary\x00")
    w = {
        "root": root, "task": family["task"], "notes": root / "notes", "garbage": root / "garbage.toml",
        "recipe": write_recipe(root / "r.toml", family),
        "hub_recipe": write_recipe(root / "hub.toml", hub_models()),
        "notes_recipe": write_recipe(root / "notes.toml", dict(family, task=root / "notes")),
        "build": root / "build",
    }
    r = run_hubswap("build", w["recipe"], "--no-eval", "-o", w["build"])
    assert r.returncode == 0, r.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        w["dead"] = f"http://127.0.0.1:{s.getsockname()[1]}"
    with read_only_mount(root / "ro", "64m", files={"r.toml": recipe_toml(family)}, trees={"build": w["build"]}) as ro:
        w["ro"] = ro
        yield w


def cases(w: dict) -> dict[tuple[str, str], list[tuple[list, dict]]]:
    """(command, situation) -> runs (argv, environment)."""
    missing, ro, dead = w["root"] / "nope", w["ro"], {"HF_ENDPOINT": w["dead"]}
    # offline with an empty Hub cache of its own: the session's cache may hold these repos already
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(w["root"] / "hf-empty")}
    token = {"HF_TOKEN": "hf_not_a_real_token"}
    return {
        ("validate", "missing"): [(["validate", missing / "r.toml"], {})],
        ("validate", "unreadable"): [(["validate", w["notes"]], {}), (["validate", w["garbage"]], {})],
        ("validate", "not-a-model"): [(["validate", w["notes_recipe"]], {})],
        ("validate", "bad-flags"): [(["validate"], {}), (["validate", w["recipe"], "--nope"], {})],
        ("plan", "missing"): [(["plan", missing / "r.toml"], {})],
        ("plan", "unreadable"): [(["plan", w["notes"]], {}), (["plan", w["garbage"]], {})],
        ("plan", "not-a-model"): [(["plan", w["notes_recipe"]], {})],
        ("plan", "no-network"): [(["plan", w["hub_recipe"]], dead)],
        ("plan", "offline"): [(["plan", w["hub_recipe"]], offline)],
        ("plan", "bad-flags"): [(["plan", w["recipe"], "--layers", "six"], {}), (["plan", w["recipe"], "--layers", "-2"], {})],
        ("build", "missing"): [(["build", missing / "r.toml"], {})],
        ("build", "unreadable"): [(["build", w["garbage"], "--no-eval"], {}), (["build", w["notes"]], {})],
        ("build", "not-a-model"): [(["build", w["notes_recipe"], "--no-eval", "-o", w["root"] / "b1"], {})],
        ("build", "read-only"): [(["build", w["recipe"], "--no-eval", "-o", ro / "b"], {})],
        ("build", "no-network"): [(["build", w["hub_recipe"], "--no-eval", "-o", w["root"] / "b2"], dead),
                                  (["build", w["recipe"], "-o", w["root"] / "b3"], dead)],  # MGSM from the Hub
        ("build", "offline"): [(["build", w["hub_recipe"], "--no-eval", "-o", w["root"] / "b4"], offline)],
        ("build", "bad-flags"): [(["build", w["recipe"], "--limit", "-3"], {}), (["build", w["recipe"], "--limit", "x"], {}),
                                 (["build", w["recipe"], "--no-eval", "--max-shard-size", "huge"], {})],
        ("lock", "missing"): [(["lock", missing / "r.toml"], {})],
        ("lock", "unreadable"): [(["lock", w["garbage"]], {})],
        ("lock", "not-a-model"): [(["lock", w["notes_recipe"]], {})],
        ("lock", "read-only"): [(["lock", ro / "r.toml"], {})],
        ("lock", "no-network"): [(["lock", w["hub_recipe"]], dead)],
        ("lock", "offline"): [(["lock", w["hub_recipe"]], offline)],
        ("lock", "bad-flags"): [(["lock"], {})],
        ("push", "missing"): [(["push", missing], {})],
        ("push", "unreadable"): [(["push", w["garbage"]], {})],
        ("push", "not-a-model"): [(["push", w["notes"]], {})],
        ("push", "read-only"): [(["push", ro / "build", "--repo", "me/x"], dead | token)],
        ("push", "no-network"): [(["push", w["build"], "--repo", "me/x"], dead | token),
                                 (["push", w["build"], "--repo", "me/x"], dead)],
        ("push", "offline"): [(["push", w["build"], "--repo", "me/x"], offline | token)],
        ("push", "bad-flags"): [(["push", w["build"], "--repo"], {}), (["push", w["build"], "--repo", "not a repo!"], token)],
        ("analyze", "missing"): [(["analyze", missing / "r.toml"], {})],
        ("analyze", "unreadable"): [(["analyze", w["garbage"]], {})],
        ("analyze", "not-a-model"): [(["analyze", w["notes_recipe"], "-o", w["root"] / "a1"], {})],
        ("analyze", "read-only"): [(["analyze", w["recipe"], "-o", ro / "a"], {})],
        ("analyze", "no-network"): [(["analyze", w["hub_recipe"], "-o", w["root"] / "a2"], dead)],
        ("analyze", "offline"): [(["analyze", w["hub_recipe"], "-o", w["root"] / "a3"], offline)],
        ("analyze", "bad-flags"): [(["analyze"], {}), (["analyze", w["recipe"], "--nope"], {})],
        ("sweep", "missing"): [(["sweep", missing / "r.toml", "--bottom", "1", "--top", "1"], {})],
        ("sweep", "unreadable"): [(["sweep", w["garbage"], "--bottom", "1", "--top", "1"], {})],
        ("sweep", "not-a-model"): [(["sweep", w["notes_recipe"], "--bottom", "1", "--top", "1", "-o", w["root"] / "s1"], {})],
        ("sweep", "read-only"): [(["sweep", w["recipe"], "--bottom", "1", "--top", "1", "-o", ro / "s"], {}),
                                 (["sweep", ro / "r.toml", "--bottom", "1", "--top", "1", "-o", w["root"] / "s2"], {})],
        ("sweep", "no-network"): [(["sweep", w["hub_recipe"], "--bottom", "1", "--top", "1", "-o", w["root"] / "s3"], dead)],
        ("sweep", "offline"): [(["sweep", w["hub_recipe"], "--bottom", "1", "--top", "1", "-o", w["root"] / "s4"], offline)],
        ("sweep", "bad-flags"): [(["sweep", w["recipe"]], {}), (["sweep", w["recipe"], "--bottom", "x", "--top", "1"], {}),
                                 (["sweep", w["recipe"], "--bottom", "3..1", "--top", "1"], {}),
                                 (["sweep", w["recipe"], "--bottom", "1", "--top", "1", "--limit", "-3"], {})],
        ("demo", "read-only"): [(["demo", "-o", ro / "demo"], {})],
        ("demo", "bad-flags"): [(["demo", "--limit", "x"], {}), (["demo", "--limit", "-3", "-o", w["root"] / "d"], {})],
        ("card", "missing"): [(["card", missing], {})],
        ("card", "unreadable"): [(["card", w["garbage"]], {})],
        ("card", "not-a-model"): [(["card", w["notes"]], {}), (["card", w["task"]], {})],
        ("card", "read-only"): [(["card", ro / "build"], {})],
        ("card", "bad-flags"): [(["card"], {}), (["card", w["build"], "--nope"], {})],
        ("verify", "missing"): [(["verify", "org/absent"], dead)],
        ("verify", "read-only"): [(["verify", "org/x", "-o", ro / "v"], {})],
        ("verify", "no-network"): [(["verify", "org/x", "-o", w["root"] / "v1"], dead)],
        ("verify", "offline"): [(["verify", "org/x", "-o", w["root"] / "v2"], offline)],
        ("verify", "bad-flags"): [(["verify"], {}), (["verify", "not a repo!"], {}), (["verify", "org/x@"], {})],
        ("eval", "missing"): [(["eval", missing, "-o", w["root"] / "e1"], {}),
                              (["eval", w["task"], "--dataset", missing, "-o", w["root"] / "e2"], {})],
        ("eval", "unreadable"): [(["eval", w["garbage"], "-o", w["root"] / "e3"], {}),
                                 (["eval", w["task"], "--dataset", w["garbage"], "-o", w["root"] / "e4"], {})],
        ("eval", "not-a-model"): [(["eval", w["notes"], "-o", w["root"] / "e5"], {}),
                                  (["eval", w["task"], "--dataset", w["notes"], "-o", w["root"] / "e6"], {})],
        ("eval", "read-only"): [(["eval", w["task"], "-o", ro / "e"], {})],
        ("eval", "no-network"): [(["eval", "org/task", "-o", w["root"] / "e7"], dead),
                                 (["eval", w["task"], "-o", w["root"] / "e8"], dead)],
        ("eval", "offline"): [(["eval", "org/task", "-o", w["root"] / "e9"], offline)],
        ("eval", "bad-flags"): [(["eval"], {}), (["eval", w["task"], "--prompt", "nope"], {}),
                                (["eval", w["task"], "--vllm", "noequals"], {}), (["eval", w["task"], "--languages", "xx"], {}),
                                (["eval", w["task"], "--compare", "model=" + str(w["task"])], {})],
    }


def commands() -> list[str]:
    r = run_hubswap("--help")
    listed = re.search(r"\{([a-z,]+)\}", r.stdout)  # argparse's "{validate,plan,...}" when shown
    if listed:
        return listed.group(1).split(",")
    return re.findall(r"^    ([a-z]+) ", r.stdout, re.MULTILINE)


def test_every_command_is_swept(world):
    swept = {command for command, _ in cases(world)}
    assert set(commands()) == swept


# Cases that may succeed: `validate` checks a recipe's schema, not whether its folders are models.
MAY_PASS = {("validate", "not-a-model")}


@pytest.mark.parametrize("situation", SITUATIONS)
def test_no_command_answers_a_hostile_situation_with_a_traceback(situation, world):
    from concurrent.futures import ThreadPoolExecutor

    runs = [(command, argv, env) for (command, where), each in cases(world).items() if where == situation
            for argv, env in each]
    assert runs

    def run(case):
        command, argv, env = case
        return command, argv, env, run_hubswap(*argv, env=env, cwd=world["root"], timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:  # processes that mostly wait for their interpreter to start
        for command, argv, env, r in pool.map(run, runs):
            shown = f"hubswap {' '.join(map(str, argv))} {env or ''}: exit {r.returncode}\n{r.stderr[-3000:]}"
            assert "Traceback" not in r.stderr, shown
            assert r.returncode in EXIT_CODES, shown
            if (command, situation) not in MAY_PASS:
                assert r.returncode != 0 and r.stderr.strip(), shown
