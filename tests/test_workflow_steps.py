"""build-model.yml run end to end: its own `run:` steps, parsed from the YAML and executed in order
by tests/support/workflow_runner.py with the environment a runner gives them, against the test Hub.

Real: every `run:` script of the setup, build and publish jobs (recipe selection, the builds
folder, `hubswap build`, the job summary, the gate check, `hubswap push`, the cleanup), `if:`
conditions, job outputs into the matrix, GITHUB_ENV / GITHUB_OUTPUT / GITHUB_STEP_SUMMARY,
environment secrets, a tiny recipe built and evaluated (transformers backend) and published to the
HTTP Hub of tests/support/hub_server.py.
Stood in for: actions/checkout (`git clean -ffdx`, as it does), actions/upload-artifact (the
matched files are copied), and the two install steps (`id: install`: no network here; the stand-in
points .venv/bin/hubswap at this checkout). Not modelled: which runner takes a job, reviewers,
concurrency, permissions, timeouts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.recipes import write_recipe
from tests.support.workflow_runner import WorkflowRunner, condition, evaluate, interpolate, parse_env_file

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "build-model.yml"
WRITE, READ = "hf_test_ci_write_token", "hf_test_ci_read_token"
RUN_ID = 4242


def _tables(mgsm: Path, *, min_accuracy: float, repo: str) -> dict:
    """[eval], [gate] and [publish] of the runner's recipes."""
    return dict(
        eval={"dataset": str(mgsm), "languages": ["sw"], "prompt": "direct", "num_fewshot": 0, "max_new_tokens": 4,
              "compare": ["task"], "backend": "transformers", "limit": 2},
        gate={"must_beat": ["task"], "min_accuracy": min_accuracy},
        publish={"repo": repo, "private": True},
    )

def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


# --- stand-ins for what cannot run here ------------------------------------------------------------


def checkout(ctx, with_):
    """actions/checkout on a runner that ran an earlier job: the workspace is cleaned of everything
    untracked or ignored (a build folder inside it would be gone), tracked files reset."""
    assert with_.get("persist-credentials") == "false"
    _git(ctx.workspace, "clean", "-ffdxq")
    _git(ctx.workspace, "reset", "-q", "--hard", ctx.env["GITHUB_SHA"])


def upload_artifact(artifacts: Path):
    def upload(ctx, with_):
        files: list[Path] = []
        for line in with_["path"].splitlines():
            if not line.strip():
                continue
            p = Path(line.strip())
            p = p if p.is_absolute() else ctx.workspace / p
            files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
        if not files:
            if with_.get("if-no-files-found", "warn") == "error":
                raise FileNotFoundError(f"no files for artifact {with_['name']}")
            return
        root = Path(os.path.commonpath([f.parent for f in files]))
        dest = artifacts / with_["name"]
        for f in files:
            (dest / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / f.relative_to(root))
    return upload


def install(ctx, with_):
    """Instead of `python3 -m venv .venv && pip install ...`: .venv/bin/{python,hubswap} that run
    this checkout with the test session's interpreter (PYTHONPATH carries the checkout)."""
    bin_ = ctx.workspace / ".venv" / "bin"
    bin_.mkdir(parents=True)
    for name, cmd in (("python", f'exec "{sys.executable}" "$@"'),
                      ("hubswap", f'exec "{sys.executable}" -m hubswap.cli "$@"')):
        (bin_ / name).write_text(f"#!/bin/sh\n{cmd}\n")
        (bin_ / name).chmod(0o755)


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(hub):
    """The test Hub of tests/conftest.py with the CI user's write and read tokens."""
    hub.add_user("ci", WRITE, role="write", orgs=("org",))
    hub.add_user("ci", READ, role="read", orgs=("org",))
    return hub


@pytest.fixture(scope="module")
def runner_host(tmp_path_factory, tiny_llama, mgsm_dir):
    """A runner machine: a workspace (a git checkout holding the recipes), HUBSWAP_BUILDS."""
    root = tmp_path_factory.mktemp("runner")
    ws = root / "_work" / "hubswap"
    (ws / "recipes").mkdir(parents=True)
    shutil.copytree(REPO / ".github", ws / ".github")
    shutil.copy(REPO / ".gitignore", ws / ".gitignore")
    write_recipe(ws / "recipes" / "tiny.toml", tiny_llama, name="tiny",
                 **_tables(mgsm_dir, min_accuracy=0.0, repo="org/tiny"))
    _git(ws, "init", "-q", "-b", "main")
    _git(ws, "config", "user.email", "ci@example.com")
    _git(ws, "config", "user.name", "ci")
    _git(ws, "add", ".")
    _git(ws, "commit", "-q", "-m", "tiny recipe")
    return root, ws


def make_runner(host, hub, *, event: str, inputs=None, event_payload=None, builds: Path | None = None,
                run_id: int = RUN_ID):
    root, ws = host
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUBSWAP_BUILDS")}
    env.update(HF_ENDPOINT=hub.url, RUNNER_NAME="gpu-1", HOME=str(root / "home"))
    if builds is not None:
        env["HUBSWAP_BUILDS"] = str(builds)  # what the runner's .env sets
    artifacts = root / f"artifacts-{run_id}"
    runner = WorkflowRunner(
        WORKFLOW, workspace=ws, runner_env=env,
        actions={"actions/checkout": checkout, "actions/upload-artifact": upload_artifact(artifacts)},
        substitute={"install": install},
        secrets={"gpu-build": {"HF_READ_TOKEN": READ}, "huggingface": {"HF_TOKEN": WRITE}},
        github={"event_name": event, "sha": _git(ws, "rev-parse", "HEAD"), "ref": "refs/heads/main",
                "run_id": str(run_id), "run_attempt": "1", "repository": "org/hubswap",
                "event": event_payload or {}},
        inputs=inputs or {},
    )
    return runner, artifacts


def _only_installs_were_replaced(job):
    kinds = {s.name: s.kind for s in job.steps}
    assert [n for n, k in kinds.items() if k == "substituted"] == [s.name for s in job.steps if s.id == "install"]


# --- the workflow, run ------------------------------------------------------------------------------


def test_dispatch_builds_summarises_uploads_the_card_and_publishes_from_the_runner(runner_host, hub, tmp_path):
    builds = tmp_path / "builds"
    runner, artifacts = make_runner(runner_host, hub, event="workflow_dispatch",
                                    inputs={"recipe": "recipes/tiny.toml"}, builds=builds)
    jobs = runner.run()

    (setup,) = jobs["setup"]
    assert setup.result == "success", setup.log()
    assert json.loads(setup.outputs["matrix"]) == {"include": [{"recipe": "recipes/tiny.toml", "name": "tiny"}]}

    (build,) = jobs["build"]
    assert build.result == "success", build.log()
    _only_installs_were_replaced(build)
    assert all(s.outcome == "success" for s in build.steps), build.log()
    build_dir = builds / "org" / "hubswap" / f"run-{RUN_ID}" / "tiny"
    assert build.env["BUILD_DIR"] == str(build_dir)
    # The job summary: the card's comparison table and the gate's verdict.
    assert build.summary.startswith("## tiny\n"), build.summary
    assert "merged" in build.summary and "task" in build.summary
    assert "passed" in build.summary.lower(), build.summary
    # The artifact: card, records, per-question jsonl; no weights.
    card = artifacts / "card-tiny"
    got = sorted(p.relative_to(card).as_posix() for p in card.rglob("*") if p.is_file())
    lm_eval = [f for f in got if "/lm-eval/" in f]
    assert [f for f in got if f not in lm_eval] == [
        "eval/merged.sw.jsonl", "eval/task.sw.jsonl", "model/README.md", "model/hubswap/eval_results.json",
        "model/hubswap/layer_map.svg", "model/hubswap/lock.json", "model/hubswap/recipe.toml"], got
    # lm-eval's own files per model, in the eval folder and published beside eval_results.json
    assert sorted(re.sub(r"_[0-9T:.-]+\.json", "_DATE.json", f) for f in lm_eval) == sorted(
        f"{where}/lm-eval/{model}/{name}" for where in ("eval", "model/hubswap") for model in ("merged", "task")
        for name in ("results_DATE.json", "samples_mgsm_direct_sw_DATE.jsonl")), lm_eval
    results = json.loads((card / "model/hubswap/eval_results.json").read_text())
    assert results["gate"]["passed"] is True

    # publish: on the runner that built it, from the builds folder, then the folder is freed.
    (publish,) = jobs["publish"]
    assert publish.result == "success", publish.log()
    _only_installs_were_replaced(publish)
    assert publish.env["BUILD_DIR"] == str(build_dir)
    head = hub.head("org/tiny").sha
    assert publish.summary.strip() == f"published {hub.url}/org/tiny (commit {head[:12]})", publish.summary
    repo = hub.repos["org/tiny"]
    assert repo.private
    lock = json.loads((card / "model/hubswap/lock.json").read_text())
    remote = set(hub.head("org/tiny").files) - {".gitattributes"}
    assert remote == {*lock["output"]["files"], "README.md", "hubswap/recipe.toml", "hubswap/lock.json",
                      "hubswap/eval_results.json", "hubswap/layer_map.svg",
                      *(f.removeprefix("model/") for f in lm_eval if f.startswith("model/"))}
    for name, rec in lock["output"]["files"].items():
        assert hub.head("org/tiny").files[name].size == rec["size"], name
    assert hub.read("org/tiny", "README.md") == (card / "model/README.md").read_bytes()
    assert not build_dir.exists() and not build_dir.parent.exists()


def test_a_failing_gate_publishes_nothing(runner_host, hub, tmp_path, tiny_llama, mgsm_dir):
    root, ws = runner_host
    # A push to main that adds a recipe whose gate cannot pass (random weights answer nothing).
    before = _git(ws, "rev-parse", "HEAD")
    write_recipe(ws / "recipes" / "strict.toml", tiny_llama, name="strict",
                 **_tables(mgsm_dir, min_accuracy=0.5, repo="org/strict"))
    _git(ws, "add", "recipes/strict.toml")
    _git(ws, "commit", "-q", "-m", "strict recipe")
    builds = tmp_path / "builds"
    commits = hub.count("POST", "*")
    runner, artifacts = make_runner(runner_host, hub, event="push", event_payload={"before": before},
                                    builds=builds, run_id=RUN_ID + 1)
    jobs = runner.run()

    (build,) = jobs["build"]
    assert build.matrix == {"recipe": "recipes/strict.toml", "name": "strict"}
    assert build.result == "failure", build.log()
    step = build.step("Build (no push)")
    assert step.returncode == 6 and "error: gate failed" in step.stderr, build.log()
    # The summary and the card artifact are still written; the weights stay on the runner.
    assert "failed" in build.summary.lower(), build.summary
    results = json.loads((artifacts / "card-strict" / "model/hubswap/eval_results.json").read_text())
    assert results["gate"]["passed"] is False
    build_dir = builds / "org" / "hubswap" / f"run-{RUN_ID + 1}" / "strict"
    assert (build_dir / "model" / "config.json").is_file()
    assert [j.result for j in jobs["publish"]] == ["skipped"]

    # Even if the publish job ran for this build, its own gate check stops before the token is used.
    needs = {"setup": {"result": "success", "outputs": jobs["setup"][0].outputs},
             "build": {"result": "success", "outputs": {}}}
    (publish,) = runner.run(only=["publish"], needs=needs)["publish"]
    assert publish.result == "failure"
    assert publish.step("Find the build on this runner").outcome == "success"
    gate = publish.step("Check the gate")
    assert gate.outcome == "failure" and "::error title=gate::strict was not evaluated or did not pass" in gate.stdout
    assert [s.outcome for s in publish.steps[-2:]] == ["skipped", "skipped"]  # push, cleanup
    assert "org/strict" not in hub.repos
    assert hub.count("POST", "*") == commits  # no repo created, no upload, no commit
    assert build_dir.exists()


def test_publish_on_a_runner_without_the_build_and_a_runner_without_a_builds_folder(runner_host, hub, tmp_path):
    runner, _ = make_runner(runner_host, hub, event="workflow_dispatch", inputs={"recipe": "recipes/tiny.toml"},
                            builds=tmp_path / "elsewhere", run_id=RUN_ID + 2)
    setup = runner.run(only=["setup"])["setup"][0]
    needs = {"setup": {"result": "success", "outputs": setup.outputs}, "build": {"result": "success", "outputs": {}}}
    (publish,) = runner.run(only=["publish"], needs=needs)["publish"]
    find = publish.step("Find the build on this runner")
    assert find.outcome == "failure"
    assert (f"::error title=no build::no build of tiny from run {RUN_ID + 2} at {tmp_path}/elsewhere/org/hubswap/"
            f"run-{RUN_ID + 2}/tiny on runner gpu-1") in find.stdout
    assert [s.outcome for s in publish.steps[-3:]] == ["skipped"] * 3

    unset, _ = make_runner(runner_host, hub, event="workflow_dispatch", inputs={"recipe": "recipes/tiny.toml"},
                           run_id=RUN_ID + 3)
    (build,) = unset.run(only=["build"], needs=needs)["build"]
    folder = build.step("folder")
    assert folder.outcome == "failure" and "HUBSWAP_BUILDS is not set on runner gpu-1" in folder.stdout
    assert [s.outcome for s in build.steps[2:]] == ["skipped"] * 4  # install, build, summary, upload


# --- the runner's own rules -----------------------------------------------------------------------


def test_expressions_and_conditions_as_actions_reads_them():
    ctx = {"needs": {"setup": {"outputs": {"count": "0", "matrix": '{"include": [{"a": 1}]}'}}},
           "steps": {"folder": {"outcome": "success"}}, "matrix": {"name": "x"}, "env": {"B": "/b"}}
    ok = {"success": True, "failure": False, "always": True, "cancelled": False}
    failed = {**ok, "success": False, "failure": True}
    assert condition("needs.setup.outputs.count != '0'", ctx, ok) is False
    assert condition("needs.setup.outputs.count == 0", ctx, ok) is True  # numbers and strings compare loosely
    assert condition(None, ctx, failed) is False  # success() by default
    assert condition("${{ !cancelled() && steps.folder.outcome == 'success' }}", ctx, failed) is True
    assert condition("steps.folder.outcome == 'SUCCESS'", ctx, failed) is False  # implicit success() &&
    assert interpolate("${{ fromJSON(needs.setup.outputs.matrix) }}", ctx) == {"include": [{"a": 1}]}
    assert interpolate("card-${{ matrix.name }}", ctx) == "card-x"
    assert interpolate("${{ env.B }}/model/", ctx) == "/b/model/"
    with pytest.raises(ValueError, match="not modelled"):
        evaluate("hashFiles('x')", ctx)
    assert parse_env_file("A=1\nB<<EOF\nx\ny\nEOF\nC=a=b\n") == {"A": "1", "B": "x\ny", "C": "a=b"}
