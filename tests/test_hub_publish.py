"""End to end through our Hub server: recipe naming Hub repos -> lock -> build -> push ->
snapshot_download -> from_pretrained; and every way publishing refuses or fails."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.support.cli import run_hubswap
from tests.support.hub_server import READ, WRITE, seed
from tests.support.recipes import hub_models, write_recipe

NAME, PUBLISH = "tiny-hub-merge", {"repo": "org/merged", "private": True}

@pytest.fixture(scope="module")
def published(hub, tiny_llama, tmp_path_factory):
    """A real build of a Hub recipe pushed with `hubswap build --push`: (hub, build dir, work dir)."""
    work = tmp_path_factory.mktemp("publish")
    seed(hub, tiny_llama)
    write_recipe(work / "merge.toml", hub_models(revision="main"), name=NAME, publish=PUBLISH)
    lock = run_hubswap("lock", "merge.toml", cwd=work, hub=hub)
    assert lock.returncode == 0, lock.stderr
    build = run_hubswap("build", "merge.toml", "--no-eval", "--push", "-o", "build", cwd=work, hub=hub,
                        env={"HF_TOKEN": WRITE})
    assert build.returncode == 0, build.stderr
    assert "published " in build.stdout
    return hub, work / "build", work


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_build_push_then_download_and_load(published):
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM

    hub, build, work = published
    repo = hub.repos["org/merged"]
    assert repo.private
    commits = [c for c in repo.commits.values() if c.parent is not None]
    assert len(commits) == 1  # the whole folder in ONE commit
    assert commits[0].title == "hubswap 0.1.0: publish 'tiny-hub-merge' built from merge.toml"
    assert "hubswap-recipe-sha256: " in commits[0].description

    model = build / "model"
    local = {p.relative_to(model).as_posix(): sha256_file(p) for p in model.rglob("*") if p.is_file()}
    assert {"hubswap/lock.json", "hubswap/recipe.toml", "README.md", "config.json"} <= set(local)
    lock = json.loads((model / "hubswap" / "lock.json").read_text())
    pinned = json.loads((work / "merge.lock.json").read_text())
    for role in ("base", "task", "language"):
        assert lock["models"][role]["commit"] == pinned["models"][role]["commit"] == hub.head(f"org/{role}").sha
        for name, rec in lock["models"][role]["files"].items():  # the build's record agrees with the lock
            assert rec == pinned["models"][role]["files"][name]
    assert lock["models"]["base"]["files"]  # base was only preflighted, yet its hashes are recorded

    snap = Path(snapshot_download("org/merged", endpoint=hub.url, token=WRITE,
                                  cache_dir=work / "download-cache"))
    remote = {p.relative_to(snap).as_posix(): sha256_file(p) for p in snap.rglob("*")
              if p.is_file() and p.name != ".gitattributes"}
    assert remote == local
    m = AutoModelForCausalLM.from_pretrained(snap)
    assert m.config.num_hidden_layers == 8


def test_second_push_of_the_same_build_is_a_no_op(published):
    hub, build, work = published
    before = dict(hub.repos["org/merged"].refs)
    again = run_hubswap("push", "build", cwd=work, hub=hub, env={"HF_TOKEN": WRITE})
    assert again.returncode == 0, again.stderr
    assert "already up to date" in again.stdout and "nothing pushed" in again.stdout
    assert hub.repos["org/merged"].refs == before
    assert hub.count("POST", "/api/models/org/merged/commit/*") == 1


def test_push_without_a_token_or_with_a_read_only_token(published):
    hub, build, work = published
    none = run_hubswap("push", "build", cwd=work, hub=hub)
    assert none.returncode == 4
    assert none.stderr.splitlines() == [
        "error: no Hugging Face token found: publishing needs a token with write access",
        "hint: set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) or run `hf auth login`",
    ]
    ro = run_hubswap("push", "build", cwd=work, hub=hub, env={"HF_TOKEN": READ})
    assert ro.returncode == 4
    assert ro.stderr.splitlines()[0] == "error: your token is read-only: it cannot publish to org/merged"
    assert READ not in ro.stderr + ro.stdout
    bad = run_hubswap("push", "build", cwd=work, hub=hub, env={"HF_TOKEN": "hf_not_a_valid_token"})
    assert bad.returncode == 4
    assert bad.stderr.splitlines()[0] == "error: the Hugging Face token was rejected (invalid or expired)"
    assert "hf_not_a_valid_token" not in bad.stderr + bad.stdout


def test_push_to_a_namespace_the_token_cannot_write(published):
    from hubswap.errors import HubError
    from hubswap.hub.publish import publish

    hub, build, _ = published
    with pytest.raises(HubError) as e:
        publish(build, repo="org/bobs-copy", endpoint=hub.url, token="hf_test_bob_token")
    assert str(e.value) == "your token cannot write to org/bobs-copy (it is read-only or has no access to 'org')"
    assert "org/bobs-copy" not in hub.repos


def _variant(build: Path, dest: Path, edit) -> Path:
    shutil.copytree(build / "model", dest / "model")
    edit(dest / "model")
    return dest


def test_push_over_another_recipes_build_is_refused_unless_forced(published, tmp_path):
    from hubswap.errors import PublishRefusedError
    from hubswap.hub.publish import publish

    hub, build, _ = published

    def other_recipe(model: Path) -> None:
        write_recipe(model / "hubswap" / "recipe.toml", hub_models(revision="main"), bottom=3, name="another-merge",
                     publish=PUBLISH)

    other = _variant(build, tmp_path / "other", other_recipe)
    head = hub.head("org/merged").sha
    with pytest.raises(PublishRefusedError) as e:
        publish(other, endpoint=hub.url, token=WRITE)
    assert str(e.value) == ("org/merged holds a hubswap build of another recipe ('tiny-hub-merge'); "
                            "refusing to replace it with 'another-merge'")
    assert "--force" in e.value.hint and hub.head("org/merged").sha == head

    def other_inputs(model: Path) -> None:
        lock = json.loads((model / "hubswap" / "lock.json").read_text())
        lock["models"]["task"]["commit"] = "f" * 40
        (model / "hubswap" / "lock.json").write_text(json.dumps(lock))

    with pytest.raises(PublishRefusedError, match="a hubswap build of other input models or files"):
        publish(_variant(build, tmp_path / "inputs", other_inputs), endpoint=hub.url, token=WRITE)

    # Into its own repo it goes; then --force replaces it with the original build, in one commit.
    r = publish(other, repo="org/other", endpoint=hub.url, token=WRITE)
    assert r.action == "created"
    r = publish(build, repo="org/other", endpoint=hub.url, token=WRITE, force=True)
    assert r.action == "updated" and hub.head("org/other").sha == r.commit
    assert hub.read("org/other", "hubswap/recipe.toml") == (build / "model" / "hubswap" / "recipe.toml").read_bytes()


def test_a_repo_not_made_by_hubswap_is_never_overwritten_without_force(published):
    from hubswap.errors import PublishRefusedError
    from hubswap.hub.publish import publish

    hub, build, _ = published
    hub.commit_files("org/handmade", {"README.md": b"# my own model\n", "notes.txt": b"keep me"})
    with pytest.raises(PublishRefusedError) as e:
        publish(build, repo="org/handmade", endpoint=hub.url, token=WRITE)
    assert str(e.value) == ("org/handmade already holds 2 file(s) not made by hubswap (e.g. README.md); "
                            "refusing to overwrite it")
    r = publish(build, repo="org/handmade", endpoint=hub.url, token=WRITE, force=True)
    files = set(hub.head("org/handmade").files)
    assert r.action == "updated" and "notes.txt" not in files and "hubswap/lock.json" in files


def test_same_build_with_a_new_card_is_updated_in_one_commit(published, tmp_path):
    from hubswap.hub.publish import publish

    hub, build, _ = published
    publish(build, repo="org/update", endpoint=hub.url, token=WRITE)

    def new_card(model: Path) -> None:
        (model / "README.md").write_text((model / "README.md").read_text() + "\nRe-evaluated.\n")

    hub.commit_files("org/update", {"notes.md": b"added by hand", "model-00009-of-00009.safetensors": b"old",
                                    "hubswap/eval/old-run.jsonl": b"{}\n"})  # an older build's leftovers
    card = _variant(build, tmp_path / "card", new_card)
    r = publish(card, repo="org/update", endpoint=hub.url, token=WRITE)
    assert r.action == "updated"
    assert hub.read("org/update", "README.md").endswith(b"Re-evaluated.\n")
    files = set(hub.head("org/update").files)
    assert "notes.md" in files  # kept: added by hand
    assert not {"model-00009-of-00009.safetensors", "hubswap/eval/old-run.jsonl"} & files  # stale: removed
    assert len([c for c in hub.repos["org/update"].commits.values() if c.parent]) == 3
    assert publish(card, repo="org/update", endpoint=hub.url, token=WRITE).action == "unchanged"


def test_a_locked_build_runs_offline_from_the_cache(published):
    hub, build, work = published
    before = len(hub.requests)
    off = run_hubswap("build", "merge.toml", "--no-eval", "-o", "offline", cwd=work, hub=hub,
                      env={"HF_HUB_OFFLINE": "1"})
    assert off.returncode == 0, off.stderr
    assert len(hub.requests) == before  # not one request: commits, files and headers came from caches
    for p in (build / "model").glob("*.safetensors"):
        assert sha256_file(p) == sha256_file(work / "offline" / "model" / p.name)


def test_a_build_that_failed_its_gate_is_not_published(published, tmp_path):
    from hubswap.errors import PublishRefusedError
    from hubswap.hub.publish import publish

    hub, build, _ = published

    from tests.support.fixed_build import eval_results

    results = eval_results(passed=False)  # the gate's verdict as apply_gate records it
    assert not results.gate.passed and results.gate.reasons

    def failed(model: Path) -> None:
        results.write(model / "hubswap" / "eval_results.json")

    with pytest.raises(PublishRefusedError) as e:
        publish(_variant(build, tmp_path / "failed", failed), repo="org/gated-out", endpoint=hub.url, token=WRITE)
    assert str(e.value) == f"this build failed its gate ({'; '.join(results.gate.reasons)}); refusing to publish it"
    assert "org/gated-out" not in hub.repos


def test_build_refuses_a_lock_that_no_longer_matches(published, tmp_path):
    hub, _, work = published
    shutil.copy(work / "merge.lock.json", tmp_path / "merge.lock.json")
    write_recipe(tmp_path / "merge.toml", hub_models(revision="v2"), name=NAME, publish=PUBLISH)
    r = run_hubswap("build", "merge.toml", "--no-eval", cwd=tmp_path, hub=hub)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "error: merge.lock.json no longer matches merge.toml: models.task is org/task@v2, the lock has org/task@main",
        "hint: refresh it with `hubswap lock merge.toml`",
    ]


def test_a_commit_that_lands_while_publishing_is_a_clear_error_and_a_rerun_succeeds(published, tmp_path):
    hub, build, work = published
    first = run_hubswap("push", str(build), "--repo", "org/race", cwd=work, hub=hub, env={"HF_TOKEN": WRITE})
    assert first.returncode == 0, first.stderr
    card = _variant(build, tmp_path / "card", lambda m: (m / "README.md").write_text(
        (m / "README.md").read_text() + "\nRe-evaluated.\n"))
    # Someone else commits after hubswap read the repo and before its commit: the Hub answers 412.
    hub.before("POST", "/api/models/org/race/preupload/*",
               lambda: hub.commit_files("org/race", {"notes.md": b"pushed by a colleague meanwhile"}))
    race = run_hubswap("push", str(card), "--repo", "org/race", cwd=work, hub=hub, env={"HF_TOKEN": WRITE})
    assert race.returncode == 5, race.stderr
    assert race.stderr.splitlines()[-2:] == [
        "error: org/race changed while publishing (someone else pushed to it)",
        "hint: run the push again: it re-checks what the repo holds",
    ]
    assert hub.head("org/race").title == "update"  # the colleague's commit, nothing of ours on top
    rerun = run_hubswap("push", str(card), "--repo", "org/race", cwd=work, hub=hub, env={"HF_TOKEN": WRITE})
    assert rerun.returncode == 0, rerun.stderr
    assert hub.read("org/race", "README.md").endswith(b"Re-evaluated.\n")
    assert hub.read("org/race", "notes.md") == b"pushed by a colleague meanwhile"  # kept


@pytest.mark.parametrize("kind", ["regular", "lfs"])
def test_a_hub_that_keeps_other_bytes_than_it_was_sent_is_caught_after_the_commit(published, kind):
    """The commit succeeds, but the Hub holds one file with its last byte flipped (same size): the
    card (a regular file: its git blob id tells) or a weight shard (LFS: its sha256 tells). The
    check of the commit against the local files says so, and a rerun replaces it."""
    hub, build, work = published
    model = build / "model"
    name = "README.md" if kind == "regular" else sorted(p.name for p in model.glob("*.safetensors"))[0]
    repo = f"org/altered-{kind}"
    hub.fault("POST", f"/api/models/{repo}/commit/*", "alter", path=name)
    r = run_hubswap("push", str(build), "--repo", repo, cwd=work, hub=hub, env={"HF_TOKEN": WRITE})
    head = hub.head(repo)
    local = (model / name).read_bytes()
    assert hub.read(repo, name) != local and len(hub.read(repo, name)) == len(local)
    assert r.returncode == 4, r.stderr  # a Hub error (README's exit codes)
    assert r.stderr.splitlines()[-2:] == [
        f"error: commit {head.sha[:12]} of {repo} does not match the local files: {name}",
        "hint: run the push again; it replaces the mismatching files",
    ]
    again = run_hubswap("push", str(build), "--repo", repo, cwd=work, hub=hub, env={"HF_TOKEN": WRITE})
    assert again.returncode == 0, again.stderr
    assert hub.read(repo, name) == local


def test_card_metadata_the_hub_rejects_is_caught_before_any_upload(published):
    hub, build, work = published
    hub.yaml_errors = ['"base_model" with value "../experts/base" is not a valid model id']
    before = len(hub.requests)
    try:
        r = run_hubswap("push", str(build), "--repo", "org/badcard", cwd=work, hub=hub, env={"HF_TOKEN": WRITE})
    finally:
        hub.yaml_errors = []
    assert r.returncode == 5, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-2:] == [  # after the warning that the build was not evaluated
        "error: the Hub rejects the model card's metadata (README.md): "
        '"base_model" with value "../experts/base" is not a valid model id',
        "hint: nothing was uploaded; fix the card (hubswap card BUILD re-renders it) and push again",
    ]
    assert "org/badcard" not in hub.repos  # checked before the repo was even created
    # nothing was uploaded nor committed anywhere: the only write-side request was the check
    writes = [(m, p) for m, p, _ in hub.requests[before:] if m in ("POST", "PUT")]
    assert writes == [("POST", "/api/validate-yaml")], writes
