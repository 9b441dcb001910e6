"""Fuzzing what users edit by hand: recipes, config.json and lock files, mutated by hypothesis
(byte flips, deleted or repeated lines, truncation, inserted bytes, values of the wrong type).

Every mutation either still works or ends in a user error: exit 2 (recipe, lock) or 3 (model
files), a message that names the file, and never a traceback. The CLI runs in-process
(``hubswap.cli.main``); the lock reader is called as a build calls it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubswap.cli import main
from hubswap.errors import HubswapError

COMMIT = "0123456789abcdef0123456789abcdef01234567"

RECIPE = """\
schema_version = 1
name = "fuzz-swap"

[models.base]
path = "experts/base"

[models.task]
path = "experts/task"

[models.language]
path = "experts/language"

[swap]
bottom = 2
top = 1
transition = 1
transition_top = 2
non_layer = "language"
files_from = "task"
dtype = "bfloat16"

[eval]
dataset = "juletxara/mgsm"
dataset_revision = "main"
languages = ["sw", "en"]
prompt = "native-cot"
num_fewshot = 8
max_new_tokens = 512
compare = ["task", "language", "base"]
limit = 10

[eval.vllm]
max_model_len = 4096
gpu_memory_utilization = 0.9

[gate]
must_beat = ["task", "language"]
margin = 0.01
min_accuracy = 0.1

[publish]
repo = "me/merged"
private = true
license = "llama3.1"
"""

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 8, "vocab_size": 512, "dtype": "float32", "tie_word_embeddings": False,
}

# Values of every TOML / JSON type, and some that are hostile to the code reading them.
TOML_VALUES = ['"x"', '""', "1", "0", "-1", "1.5", "true", "[]", "{}", '[1, "a"]', "1979-05-27", "nan",
               "inf", "99999999999999999999999", '"\U0001f642"', '"../../.."', "'''\nmulti\n'''", "{ a = 1 }"]
JSON_VALUES = [None, True, 0, -1, 1.5, 10**30, "", "x", "../../etc/passwd", "/etc/passwd", [], {}, [1, "a"],
               {"sha256": 1}, "0" * 64, COMMIT]


@st.composite
def mutated(draw, text: str, *, json_doc: bool = False) -> bytes:
    """``text`` with one to three mutations applied."""
    raw = text.encode()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "delete_line", "repeat_line", "truncate", "insert", "value", "value"]))
        lines = raw.split(b"\n")
        if kind == "flip" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
        elif kind == "delete_line":
            del lines[draw(st.integers(0, len(lines) - 1))]
            raw = b"\n".join(lines)
        elif kind == "repeat_line":
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            raw = b"\n".join(lines)
        elif kind == "truncate":
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif kind == "insert":
            i = draw(st.integers(0, len(raw)))
            raw = raw[:i] + draw(st.binary(max_size=8) | st.text(max_size=8).map(str.encode)) + raw[i:]
        elif json_doc:
            raw = _mutate_json_value(draw, raw)
        else:
            keyed = [i for i, line in enumerate(lines) if b"=" in line]
            if keyed:
                i = draw(st.sampled_from(keyed))
                lines[i] = lines[i].split(b"=", 1)[0] + b"= " + draw(st.sampled_from(TOML_VALUES)).encode()
                raw = b"\n".join(lines)
    return raw


def _mutate_json_value(draw, raw: bytes) -> bytes:
    """One value anywhere in the document replaced by a value of another type, or a key dropped."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw
    slots = []

    def walk(node):
        if isinstance(node, dict):
            for k in node:
                slots.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for i in range(len(node)):
                slots.append((node, i))
                walk(node[i])

    walk(doc)
    if not slots or not draw(st.integers(0, 9)):  # now and then the whole document
        return json.dumps(draw(st.sampled_from(JSON_VALUES))).encode()
    parent, key = draw(st.sampled_from(slots))
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = draw(st.sampled_from(JSON_VALUES))
    return json.dumps(doc, indent=2).encode()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def assert_user_error(rc: int, err: str, codes: tuple[int, ...], names: tuple[str, ...]) -> None:
    """Exit ``codes``; ``error: `` first, then a recipe's problem lines or a hint; a file named."""
    assert rc in codes, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert all(line.startswith(("error: ", "hint: ", "  ")) for line in lines), err
    assert "Traceback" not in err
    assert any(n in err for n in names), err


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="robust-fuzz-") as d:
        root = Path(d)
        for role in ("base", "task", "language"):
            (root / "experts" / role).mkdir(parents=True)
            (root / "experts" / role / "config.json").write_text(json.dumps(CONFIG, indent=2))
        yield root


FUZZ = settings(suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_validate_a_mutated_recipe(workdir, data):
    recipe = workdir / "validate.toml"
    recipe.write_bytes(data.draw(mutated(RECIPE)))
    rc, out, err = run_cli("validate", str(recipe))
    if rc == 0:
        assert "ok (fuzz-swap" in out or ": ok (" in out
    else:
        assert_user_error(rc, err, (2,), (str(recipe),))


@FUZZ
@given(data=st.data())
def test_plan_with_a_mutated_recipe_or_config(workdir, data):
    recipe = workdir / "plan.toml"
    config = workdir / "experts" / "task" / "config.json"
    mutate_config = data.draw(st.booleans())
    recipe.write_bytes(RECIPE.encode() if mutate_config else data.draw(mutated(RECIPE)))
    config.write_bytes(data.draw(mutated(json.dumps(CONFIG, indent=2), json_doc=True))
                       if mutate_config else json.dumps(CONFIG).encode())
    rc, out, err = run_cli("plan", str(recipe))
    if rc == 0:
        assert "stack, bottom -> top" in out
    else:
        assert_user_error(rc, err, (2, 3), (str(recipe), "config.json"))


def test_plan_with_a_config_that_is_not_json(workdir):
    recipe = workdir / "plan.toml"
    recipe.write_text(RECIPE)
    config = workdir / "experts" / "task" / "config.json"
    config.write_text('{\n  "num_hidden_layers": 8,\n  "vocab_size": 512,,\n}\n')
    rc, out, err = run_cli("plan", str(recipe))
    assert rc == 3 and not out
    first, hint = err.splitlines()
    assert first == f"error: {config}:3:21: not valid JSON: Expecting property name enclosed in double quotes"
    assert hint.startswith("hint: pass --layers")
    config.write_text(json.dumps(CONFIG))


# -- the lock reader ---------------------------------------------------------------------------

LOCK_RECIPE = RECIPE.replace('[models.task]\npath = "experts/task"', '[models.task]\nrepo = "org/task-expert"')


def _valid_lock(root: Path) -> dict:
    from hubswap.hashing import file_sha256

    def local(role):
        f = root / "experts" / role / "config.json"
        return {"repo": None, "revision": None, "commit": None, "path": f"experts/{role}",
                "files": {"config.json": {"sha256": file_sha256(f), "size": f.stat().st_size}}}

    return {
        "lock_version": 1, "hubswap_version": "0.1.0",
        "recipe": {"path": "lock.toml", "name": "fuzz-swap", "sha256": "0" * 64},
        "models": {
            "base": local("base"),
            "task": {"repo": "org/task-expert", "revision": "main", "commit": COMMIT, "path": None,
                     "files": {"config.json": {"sha256": "a" * 64, "size": 512},
                               "model.safetensors": {"sha256": "b" * 64, "size": 4096}}},
            "language": local("language"),
        },
    }


@FUZZ
@given(data=st.data())
def test_a_mutated_lock_is_read_or_refused(workdir, data):
    """What ``build`` does with a lock before it downloads anything: read it, check it against the
    recipe and the local files, and pin the Hub model to the locked commit and hashes."""
    from hubswap.inputs import resolve
    from hubswap.recipe import load_recipe

    recipe = workdir / "lock.toml"
    recipe.write_text(LOCK_RECIPE)
    lock = workdir / "lock.lock.json"
    lock.write_bytes(data.draw(mutated(json.dumps(_valid_lock(workdir), indent=2), json_doc=True)))
    try:
        pinned = resolve(load_recipe(recipe))
    except HubswapError as e:
        assert e.exit_code == 2, e
        assert str(lock) in str(e) and "\n" not in str(e), str(e)
        return
    task = pinned["task"]  # what the lock says is what the build will fetch and check
    assert re.fullmatch(r"[0-9a-f]{40}", task.commit)
    for rec in task.records.values():
        assert re.fullmatch(r"[0-9a-f]{64}", rec.sha256) and type(rec.size) is int and rec.size >= 0


@pytest.mark.parametrize(
    ("corrupt", "says"),
    [
        (lambda lock: "{ not json", ":1:3: not valid JSON"),
        (lambda lock: {**lock, "models": None}, "models: Input should be an object"),
        (lambda lock: {**lock, "lock_version": 99}, "lock_version 99"),
        (lambda lock: _set(lock, ["models", "base", "files", "config.json", "size"], "282"), "should be a valid integer"),
        (lambda lock: _set(lock, ["models", "base", "files", "config.json", "sha256"], "abc"), "should match pattern"),
        (lambda lock: _set(lock, ["models", "base", "files"], {"../../etc/passwd": {"sha256": "0" * 64, "size": 1}}),
         "is not a file inside the model folder"),
    ],
)
def test_build_refuses_a_corrupt_lock_in_one_line(workdir, corrupt, says):
    """Through the CLI: `build` reads the lock first and stops there, exit 2, nothing built."""
    recipe = workdir / "local.toml"
    recipe.write_text(RECIPE)
    (workdir / "experts" / "task" / "config.json").write_text(json.dumps(CONFIG, indent=2))  # as the others
    lock = _valid_lock(workdir)
    lock["models"]["task"] = lock["models"]["language"] | {"path": "experts/task"}
    bad = corrupt(lock)
    lock_file = workdir / "local.lock.json"
    lock_file.write_text(bad if isinstance(bad, str) else json.dumps(bad, indent=2))
    rc, out, err = run_cli("build", str(recipe), "--no-eval", "-o", str(workdir / "build"))
    assert_user_error(rc, err, (2,), (str(lock_file),))
    first, hint = err.splitlines()
    assert says in first and hint == f"hint: refresh it with `hubswap lock {recipe}`"
    assert not (workdir / "build").exists()
    lock_file.unlink()


def _set(doc: dict, path: list[str], value) -> dict:
    doc = json.loads(json.dumps(doc))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


# -- bad input is refused, with the right error: validation that became too lenient ---------------
# The fuzz tests above accept "still works" for any mutation, so they cannot see a check that
# stopped refusing. These draw inputs that are wrong by construction and must be refused.

# [eval.vllm] is left out: it is vLLM's engine arguments, open by design.
SECTIONS = ["", "[swap]", "[eval]", "[gate]", "[publish]", "[models.task]"]
KEY = st.from_regex(r"zz_[a-z0-9_]{1,10}", fullmatch=True)  # no field of any record starts so


def _recipe_with_key(section: str, line: str) -> str:
    """RECIPE with ``line`` added at the start of ``section`` ("": the top level)."""
    if not section:
        return RECIPE.replace('name = "fuzz-swap"\n', f'name = "fuzz-swap"\n{line}\n', 1)
    assert f"\n{section}\n" in RECIPE
    return RECIPE.replace(f"\n{section}\n", f"\n{section}\n{line}\n", 1)


@FUZZ
@given(section=st.sampled_from(SECTIONS), key=KEY, value=st.sampled_from(TOML_VALUES))
def test_an_unknown_recipe_key_is_refused_naming_it(workdir, section, key, value):
    recipe = workdir / "unknown.toml"
    recipe.write_text(_recipe_with_key(section, f"{key} = {value}"))
    rc, out, err = run_cli("validate", str(recipe))
    assert_user_error(rc, err, (2,), (str(recipe),))
    where = section.strip("[]") + "." if section else ""
    assert f": {where}{key}: unknown key" in err, err


# (field, a value of the wrong type or out of range, what the error says)
BAD_SWAP = [("bottom", '"2"', "swap.bottom"), ("bottom", "-1", "swap.bottom"), ("top", "1.5", "swap.top"),
            ("transition", "true", "swap.transition"), ("non_layer", '"both"', "swap.non_layer"),
            ("dtype", '"float8"', "swap.dtype"), ("bottom", "99", "layers"), ("files_from", '"base"', "swap.files_from")]


@FUZZ
@given(bad=st.sampled_from(BAD_SWAP), data=st.data())
def test_a_swap_value_of_the_wrong_type_or_range_is_refused(workdir, bad, data):
    field, value, says = bad
    text = re.sub(rf"(?m)^{field} = .*$", f"{field} = {value}", RECIPE, count=1)
    if f"\n{field} = {value}\n" not in text:  # a field the recipe leaves to its default
        text = text.replace("[swap]\n", f"[swap]\n{field} = {value}\n", 1)
    recipe = workdir / "bad-swap.toml"
    recipe.write_text(text)
    # validate, or plan (which knows the layer count: a bottom of 99 in an 8-layer model)
    command = data.draw(st.sampled_from(["validate", "plan"])) if says != "layers" else "plan"
    rc, out, err = run_cli(command, str(recipe))
    assert rc in (2, 3) and "Traceback" not in err, (command, err)
    assert says in err and str(recipe) in err, (command, err)


@FUZZ
@given(data=st.data(), key=KEY)
def test_a_lock_with_an_unknown_key_anywhere_is_refused(workdir, data, key):
    from hubswap.errors import LockMismatchError
    from hubswap.inputs import resolve
    from hubswap.recipe import load_recipe

    recipe = workdir / "lock.toml"
    recipe.write_text(LOCK_RECIPE)
    doc = _valid_lock(workdir)
    # every object of the lock that is a record (not a mapping of names: models, files)
    objects = [doc, doc["recipe"], *doc["models"].values(),
               *(f for m in doc["models"].values() for f in m["files"].values())]
    target = data.draw(st.sampled_from(objects))
    target[key] = data.draw(st.sampled_from(JSON_VALUES))
    lock = workdir / "lock.lock.json"
    lock.write_text(json.dumps(doc, indent=2))
    with pytest.raises(LockMismatchError) as e:
        resolve(load_recipe(recipe))
    assert str(lock) in str(e.value) and f"{key}: Extra inputs are not permitted" in str(e.value), str(e.value)
