"""Publishing a build: its model folder as ONE commit, never over something by surprise.

    publish(model_dir, force=...)   -> PublishResult: created, updated, or unchanged (same build there)

A repo is replaced only by a build of the same recipe and inputs (``build_identity``); a repo
holding another build, files hubswap did not make, or a build that failed its gate is left alone
unless ``force``. After the commit, the remote files' hashes are checked against the local ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hubswap import __version__
from hubswap.errors import HubError, HubswapError, PublishRefusedError
from hubswap.files import human_size
from hubswap.hashing import file_sha256, git_blob_sha1, json_sha256
from hubswap.hub.errors import WRITE_TOKEN_HINT, hub_call
from hubswap.hub.resolve import hub_api
from hubswap.recipe import parse_recipe
from hubswap.records import (
    BUILD_RECORD,
    EVAL_RESULTS,
    RECIPE_COPY,
    BuildRecord,
    ModelEntry,
    find_model_dir,
    read_build_record,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    repo: str
    commit: str
    url: str
    action: str  # "created" | "updated" | "unchanged"

    def __str__(self) -> str:
        if self.action == "unchanged":
            return f"{self.url} (already up to date at commit {self.commit[:12]}; nothing pushed)"
        return f"{self.url} (commit {self.commit[:12]})"


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    sha256: str
    size: int
    git_sha1: str | None  # only for files small enough to be regular git blobs


def _manifest(folder: Path) -> dict[str, _LocalFile]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel.startswith((".git/", ".cache/")) or "/.git/" in rel:
            continue
        size = p.stat().st_size
        out[rel] = _LocalFile(p, file_sha256(p), size, git_blob_sha1(p) if size <= (10 << 20) else None)
    return out


def build_identity(models: dict[str, ModelEntry], recipe_text: str) -> dict:
    """What makes two builds "the same build": the recipe's models and swap, and the exact inputs."""
    try:
        r = parse_recipe(recipe_text, Path("recipe.toml")).recipe
        merge = {"name": r.name, "models": r.models.model_dump(mode="json"), "swap": r.swap.model_dump(mode="json", exclude={"clone"})}
    except HubswapError:  # a recipe of another schema: fall back to its exact text
        merge = {"text": recipe_text}
    inputs = {role: {"repo": m.repo, "commit": m.commit, "files": {n: f.sha256 for n, f in sorted(m.files.items())}}
              for role, m in sorted(models.items())}
    return {"recipe": json_sha256(merge), "inputs": json_sha256(inputs), "name": merge.get("name")}


def publish(model_dir: str | Path, *, repo: str | None = None, private: bool | None = None,
            force: bool = False, endpoint: str | None = None, token: str | None = None) -> PublishResult:
    """Publish a build's model folder as ONE commit to ``repo`` (default: the recipe's [publish].repo).

    - the same build already there (same files) -> nothing is pushed;
    - a hubswap build of the same recipe and inputs -> updated (e.g. a new evaluation or card);
    - a build of another recipe or of other inputs, a repo hubswap did not make, or a build that
      failed its gate -> refused unless ``force``;
    - after the commit, the remote files' hashes are compared with the local ones.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    build = _Build(find_model_dir(model_dir))
    pub = build.loaded.recipe.publish
    repo = repo or (pub.repo if pub else None)
    if repo is None:
        raise HubswapError("nothing to publish to: the recipe has no [publish] table",
                           hint='add [publish] repo = "org/name" to the recipe, or pass --repo ORG/NAME')
    private = private if private is not None else (pub.private if pub else True)
    api = _write_api(repo, endpoint, token)
    _check_gate(build.folder, force)
    _check_card(api, build.folder, repo, endpoint)

    # What does the repo hold now, and may this build replace it?
    remote = _Remote.read(api, repo, endpoint)
    if remote.info is not None and remote.info.private is False and private:
        log.warning("%s exists and is public although the recipe asks for a private repo; "
                    "its visibility is left as it is", repo)
    if remote.content and _may_replace(build, remote, repo, force) == "same":
        log.info("%s already holds this build (commit %s): nothing to push", repo, remote.head[:12])
        return PublishResult(repo, remote.head, f"{api.endpoint}/{repo}", "unchanged")

    # One commit: every file of the build, and the removal of what an older build left behind.
    if remote.head is None:
        hub_call(lambda: api.create_repo(repo, private=private, exist_ok=True), "creating the repo",
                  repo=repo, write=True, endpoint=endpoint)
    replace_all = force and not remote.by_hubswap  # --force over a repo hubswap did not make
    stale = sorted(n for n in remote.content - set(build.files) if replace_all or _artifact(n) or n in remote.outputs)
    ops: list = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(f.path)) for n, f in build.files.items()]
    ops += [CommitOperationDelete(path_in_repo=n) for n in stale]
    log.info("publishing %d files (%s) to %s in one commit", len(build.files),
             human_size(sum(f.size for f in build.files.values())), repo)
    info = hub_call(
        lambda: api.create_commit(repo, ops, commit_message=build.commit_message(),
                                  commit_description=build.commit_description(), parent_commit=remote.head),
        "publishing", repo=repo, write=True, attempts=1, endpoint=endpoint,
    )

    # Check what the Hub now holds against what was meant to be published.
    after = hub_call(lambda: api.model_info(repo, revision=info.oid, files_metadata=True),
                      "verifying the commit", repo=repo, revision=info.oid, endpoint=endpoint)
    bad = _differences(build.files, {s.rfilename: s for s in after.siblings or []})
    if bad:
        raise HubError(f"commit {info.oid[:12]} of {repo} does not match the local files: {', '.join(bad[:5])}",
                       hint="run the push again; it replaces the mismatching files")
    log.info("published %s at commit %s, remote hashes verified", repo, info.oid[:12])
    return PublishResult(repo, info.oid, f"{api.endpoint}/{repo}", "created" if remote.head is None else "updated")


class _Build:
    """A build's model folder as publishing sees it: its files' hashes and its identity."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.record = read_build_record(folder)
        self.recipe_text = (folder / RECIPE_COPY).read_text(encoding="utf-8")
        self.loaded = parse_recipe(self.recipe_text, folder / RECIPE_COPY)
        self.identity = build_identity(self.record.models, self.recipe_text)
        self.files = _manifest(folder)

    def commit_message(self) -> str:
        source = Path(self.record.recipe.path).name
        return f"hubswap {__version__}: publish '{self.loaded.recipe.name}' built from {source}"

    def commit_description(self) -> str:
        """Trailers that identify the build; hubswap/lock.json and recipe.toml hold the details."""
        return "\n".join([
            f"Built by hubswap {__version__} by layer swapping; see hubswap/recipe.toml and hubswap/lock.json.",
            "",
            f"hubswap-version: {__version__}",
            f"hubswap-recipe: {self.loaded.recipe.name}",
            f"hubswap-recipe-sha256: {self.identity['recipe']}",
            f"hubswap-inputs-sha256: {self.identity['inputs']}",
            f"hubswap-build-sha256: {json_sha256({n: f.sha256 for n, f in self.files.items()})}",
        ])


class _Remote:
    """What a repo holds at its head: files with their hashes, and the identity of its hubswap build."""

    def __init__(self, info, identity: dict | None, outputs: frozenset[str] = frozenset()):
        self.info = info
        self.outputs = outputs  # the files its hubswap build wrote (its record's), licence files included
        self.head = info.sha if info is not None else None
        self.files = {s.rfilename: s for s in info.siblings or []} if info is not None else {}
        self.content = {n for n in self.files if n != ".gitattributes"}
        self.by_hubswap = BUILD_RECORD in self.files
        self.identity = identity

    @classmethod
    def read(cls, api, repo: str, endpoint: str | None) -> _Remote:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RepositoryNotFoundError

        def current():
            try:
                return api.model_info(repo, files_metadata=True)
            except RepositoryNotFoundError:
                return None

        info = hub_call(current, "reading the repo", repo=repo, endpoint=endpoint)
        if info is None or BUILD_RECORD not in {s.rfilename for s in info.siblings or []}:
            return cls(info, None)

        def text(name: str) -> str:
            path = hub_call(lambda: hf_hub_download(repo, name, revision=info.sha, endpoint=endpoint,
                                                     token=api.token),
                             name, repo=repo, revision=info.sha, endpoint=endpoint)
            return Path(path).read_text(encoding="utf-8")

        names = {s.rfilename for s in info.siblings or []}
        recipe = text(RECIPE_COPY) if RECIPE_COPY in names else ""
        try:
            record = BuildRecord.model_validate_json(text(BUILD_RECORD))
        except ValueError:  # a build record of another hubswap version: not the same build
            return cls(info, {"recipe": None, "inputs": None, "name": None})
        return cls(info, build_identity(record.models, recipe), frozenset(record.output.files))


def _write_api(repo: str, endpoint: str | None, token: str | None):
    """An HfApi with a token that can write (from huggingface_hub's usual sources), or a HubError."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token found: publishing needs a token with write access",
                       hint=WRITE_TOKEN_HINT)
    api = hub_api(endpoint, token)
    who = hub_call(lambda: api.whoami(), "checking the token", repo=repo, write=True, endpoint=endpoint)
    if ((who.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise HubError(f"your token is read-only: it cannot publish to {repo}",
                       hint="set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)")
    return api


def _may_replace(build: _Build, remote: _Remote, repo: str, force: bool) -> str:
    """"same" when the repo already holds this very build, "replace" when the build may go there;
    raises PublishRefusedError when it may not (and ``force`` is not given)."""
    if not remote.by_hubswap:
        if not force:
            raise PublishRefusedError(
                f"{repo} already holds {len(remote.content)} file(s) not made by hubswap "
                f"(e.g. {sorted(remote.content)[0]}); refusing to overwrite it",
                hint="publish to another [publish].repo, or pass --force to replace its contents",
            )
        log.warning("--force: replacing the contents of %s, which hubswap did not make", repo)
        return "replace"
    theirs, mine = remote.identity, build.identity
    if theirs["recipe"] != mine["recipe"] or theirs["inputs"] != mine["inputs"]:
        if theirs["recipe"] != mine["recipe"]:
            what = "another recipe" + (f" ('{theirs['name']}')" if theirs["name"] else "")
        else:
            what = "other input models or files"
        if not force:
            raise PublishRefusedError(
                f"{repo} holds a hubswap build of {what}; refusing to replace it with '{mine['name']}'",
                hint="publish to another [publish].repo, or pass --force to replace it",
            )
        log.warning("--force: replacing %s's build of %s", repo, what)
        return "replace"
    kept = {n: s for n, s in remote.files.items() if n in build.files or _artifact(n)}
    return "replace" if _differences(build.files, kept) else "same"


def _artifact(name: str) -> bool:
    """A file that a hubswap build writes (an older build's leftovers of these are removed, and so
    is every file its build record lists: the parents' licence files it copied); anything else that
    the owner added to a hubswap repo by hand is kept."""
    return name.endswith(".safetensors") or name == "model.safetensors.index.json" or name.startswith("hubswap/")


def _check_card(api, folder: Path, repo: str, endpoint: str | None) -> None:
    """Ask the Hub whether it accepts the card's metadata before the repo is created or anything
    uploaded: it checks every commit's README.md (huggingface_hub's create_commit asks it too, but
    only after hubswap has created the repo, and its ValueError would be a traceback). The call is
    huggingface_hub's own (HfApi._validate_yaml: ModelCard.validate would ask the default endpoint,
    not this api's)."""
    readme = folder / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8")
    try:
        hub_call(lambda: api._validate_yaml(text, repo_type="model"), "checking the card's metadata",
                 repo=repo, write=True, endpoint=endpoint)
    except ValueError as e:  # "Invalid metadata in README.md.\n- problem\n- problem"
        problems = [line.strip().removeprefix("- ") for line in str(e).splitlines()[1:] if line.strip()]
        raise PublishRefusedError(
            "the Hub rejects the model card's metadata (README.md): " + ("; ".join(problems) or str(e)),
            hint="nothing was uploaded; fix the card (hubswap card BUILD re-renders it) and push again",
        ) from None


def _check_gate(folder: Path, force: bool) -> None:
    """A build whose evaluation failed its gate is not published (unless forced)."""
    from hubswap.evaluate.results import read_eval_results

    results = folder / EVAL_RESULTS
    if not results.is_file():
        log.warning("%s was not evaluated: publishing it without a gate", folder)
        return
    gate = read_eval_results(results).gate
    if gate is not None and not gate.passed:
        reasons = "; ".join(gate.reasons) or f"see {EVAL_RESULTS}"
        if not force:
            raise PublishRefusedError(f"this build failed its gate ({reasons}); refusing to publish it",
                                      hint="pass --force to publish it anyway")
        log.warning("--force: publishing a build that failed its gate (%s)", reasons)


def _differences(local: dict[str, _LocalFile], remote: dict) -> list[str]:
    """Local files whose remote copy is missing or differs (sha256 of LFS files, git blob id of
    others), and weight files or hubswap records on the remote side that the build does not have."""
    bad = [n for n in remote if n not in local and _artifact(n)]
    for name, f in local.items():
        s = remote.get(name)
        if s is None:
            bad.append(name)
        elif s.lfs is not None:
            if s.lfs.sha256 != f.sha256 or s.lfs.size != f.size:
                bad.append(name)
        elif s.blob_id != f.git_sha1 or (s.size is not None and s.size != f.size):
            bad.append(name)
    return sorted(bad)
