"""``hubswap verify REPO[@REV]``: rebuild a published hubswap model and compare it, file by file.

1. **Read what was published**: the repo at REV pinned to a commit; its ``hubswap/`` folder (the
   recipe, the build record ``lock.json`` and the recipe's lock ``recipe.lock.json``).
2. **Check that it can be rebuilt from the Hub**: every input a Hub repo (a local folder is named
   as what it is, not verifiable from the Hub), and the lock pinning exactly the commits and file
   hashes the build record lists.
3. **Rebuild** with ``hubswap build`` (no evaluation) from the recipe and that lock, so from the
   commits the build read, whatever the experts' branches say now.
4. **Compare** the sha256 of every output file the record lists (weights, index, configs,
   tokenizer, licence files) with the published file's: the LFS sha256 the Hub records for large
   files, the downloaded bytes for small ones.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hubswap.errors import HubswapError, ModelFilesError, VerifyFailedError
from hubswap.hashing import file_sha256
from hubswap.hub.errors import hub_call
from hubswap.hub.resolve import hub_api
from hubswap.records import (
    BUILD_RECORD,
    PUBLISHED_LOCK,
    RECIPE_COPY,
    RECORDS_DIR,
    RecipeLock,
    read_build_record,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileCheck:
    name: str
    published: str | None  # sha256; None: not in the repo
    rebuilt: str | None  # sha256; None: the rebuild did not write it

    @property
    def status(self) -> str:
        if self.published is None:
            return "MISSING"  # listed by the record, not published
        if self.rebuilt is None:
            return "NOT REBUILT"
        return "ok" if self.published == self.rebuilt else "DIFFERS"

    def line(self) -> str:
        if self.status == "ok":
            return f"ok           {self.name}  sha256 {self.published}"
        return f"{self.status:<12} {self.name}  published {self.published or '-'}  rebuilt {self.rebuilt or '-'}"


@dataclass(frozen=True)
class Verification:
    repo: str
    revision: str
    commit: str
    inputs: list[str]  # one line per input: repo, the pinned commit, where its branch is now
    files: list[FileCheck]

    @property
    def ok(self) -> bool:
        return bool(self.files) and all(f.status == "ok" for f in self.files)

    def report(self) -> str:
        bad = sum(f.status != "ok" for f in self.files)
        head = (f"verify {self.repo}@{self.revision} (commit {self.commit[:12]}): rebuilt from {RECIPE_COPY} "
                f"and {PUBLISHED_LOCK}")
        tail = (f"all {len(self.files)} files match the published ones" if not bad
                else f"{bad} of {len(self.files)} files do not match the published ones")
        return "\n".join([head, *self.inputs, *(f.line() for f in self.files), tail])


def parse_target(target: str) -> tuple[str, str]:
    """``org/name`` or ``org/name@revision`` -> (repo, revision)."""
    from pydantic import ValidationError

    from hubswap.recipe import ModelSource

    repo, _, revision = target.partition("@")
    try:
        source = ModelSource(repo=repo, revision=revision or None)
    except ValidationError as e:
        msg = e.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise HubswapError(f"{target}: {msg}", hint="give a published model as ORG/NAME or ORG/NAME@REVISION") from None
    return repo, source.ref


def verify(target: str, *, output: Path | None = None, endpoint: str | None = None,
           token: str | bool | None = None, progress: bool = True) -> Verification:
    """Rebuild ``target`` (``org/name[@rev]``) from its pinned inputs and compare every output file.

    The rebuild goes to ``output`` (kept) or to a temporary folder (removed afterwards)."""
    repo, revision = parse_target(target)
    api = hub_api(endpoint, token)
    info = hub_call(lambda: api.model_info(repo, revision=revision, files_metadata=True),
                    "model info", repo=repo, revision=revision, endpoint=endpoint)
    siblings = {s.rfilename: s for s in info.siblings or []}
    if BUILD_RECORD not in siblings:
        raise ModelFilesError(f"{repo}@{revision} is not a hubswap build: it has no {BUILD_RECORD}",
                              hint="hubswap verify checks models that `hubswap push` published")
    records = _download_records(repo, info.sha, endpoint, token)
    record = read_build_record(records)
    local = [f"{role} `{m.path}`" for role, m in record.models.items() if m.path]
    if local:
        raise VerifyFailedError(
            f"{repo} was built from local folders ({', '.join(local)}): not verifiable from the Hub",
            hint="only a build whose every input is a Hub repo can be rebuilt by others")
    _pinned_lock(records, record, repo)
    inputs = [_input_line(api, role, m, endpoint) for role, m in record.models.items()]

    with tempfile.TemporaryDirectory(prefix="hubswap-verify-") as tmp:
        work = Path(output) if output is not None else Path(tmp)
        rebuilt = _rebuild(records, work, max_shard_size=record.output.max_shard_size or "5GB", progress=progress)
        files = []
        for name in sorted(record.output.files):
            s = siblings.get(name)
            published = None if s is None else (s.lfs.sha256 if s.lfs is not None
                                                 else file_sha256(_download(repo, info.sha, name, endpoint, token)))
            mine = rebuilt / name
            files.append(FileCheck(name, published, file_sha256(mine) if mine.is_file() else None))
        # Weights published beside the build's (added by hand, or left over) are not what was built.
        for name in sorted(set(siblings) - set(record.output.files)):
            if name.endswith(".safetensors"):
                files.append(FileCheck(name, siblings[name].lfs.sha256 if siblings[name].lfs else "?", None))
    return Verification(repo, revision, info.sha, inputs, files)


def _download_records(repo: str, commit: str, endpoint: str | None, token) -> Path:
    from huggingface_hub import snapshot_download

    folder = hub_call(lambda: snapshot_download(repo, revision=commit, allow_patterns=[f"{RECORDS_DIR}/*"],
                                                endpoint=endpoint, token=token),
                      f"the {RECORDS_DIR}/ folder", repo=repo, revision=commit, endpoint=endpoint)
    return Path(folder)


def _download(repo: str, commit: str, name: str, endpoint: str | None, token) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hub_call(lambda: hf_hub_download(repo, name, revision=commit, endpoint=endpoint, token=token),
                         name, repo=repo, revision=commit, endpoint=endpoint))


def _pinned_lock(records: Path, record, repo: str) -> RecipeLock:
    """The published recipe lock, checked against the build record: the same commits, and every
    file the build read with the same sha256."""
    from hubswap.records import LOCK_VERSION, load_record

    path = records / PUBLISHED_LOCK
    if not path.is_file():
        raise VerifyFailedError(
            f"{repo} has no {PUBLISHED_LOCK}: it was published by a hubswap that did not pin its rebuild",
            hint=f"its inputs' commits are in {BUILD_RECORD}; rebuild it with a lock naming them")
    lock = load_record(path, RecipeLock, version_key="lock_version", version=LOCK_VERSION,
                       what="a hubswap lock file", error=VerifyFailedError)
    problems = []
    for role, m in record.models.items():
        pinned = lock.models.get(role)
        if pinned is None or (pinned.repo, pinned.commit) != (m.repo, m.commit):
            problems.append(f"{role}: the record has {m.repo}@{m.commit}, the lock "
                            f"{pinned.repo + '@' + str(pinned.commit) if pinned else 'nothing'}")
            continue
        differ = [n for n, f in m.files.items() if pinned.files.get(n) != f]
        if differ:
            problems.append(f"{role}: {', '.join(differ[:3])} differ between the record and the lock")
    if problems:
        raise VerifyFailedError(f"{PUBLISHED_LOCK} does not pin what {BUILD_RECORD} says was built: "
                                + "; ".join(problems))
    return lock


def _input_line(api, role: str, m, endpoint: str | None) -> str:
    """'  task  org/task: pinned at <commit>; main is now <sha> (moved since the build)'."""
    revision = m.revision or "main"
    now = hub_call(lambda: api.model_info(m.repo, revision=revision), "model info", repo=m.repo,
                   revision=revision, endpoint=endpoint).sha
    where = "unchanged" if now == m.commit else f"now {now[:12]}, moved since the build"
    return f"  {role:<9} {m.repo} pinned at {m.commit[:12]} ({revision}: {where})"


def _rebuild(records: Path, work: Path, *, max_shard_size: int | str, progress: bool) -> Path:
    """``hubswap build hubswap/recipe.toml --no-eval`` in ``work``, from a copy of the records;
    returns the rebuilt model folder."""
    from hubswap.pipeline import BuildOptions, build

    recipe_dir = work / RECORDS_DIR
    recipe_dir.mkdir(parents=True, exist_ok=True)
    for f in (records / RECORDS_DIR).iterdir():
        if f.suffix in (".toml", ".j2") or f.name == Path(PUBLISHED_LOCK).name:
            shutil.copyfile(f, recipe_dir / f.name)
    log.info("rebuilding from %s pinned by %s", RECIPE_COPY, PUBLISHED_LOCK)
    result = build(recipe_dir / Path(RECIPE_COPY).name,
                   BuildOptions(output=work / "build", evaluate=False, max_shard_size=max_shard_size,
                                progress=progress))
    return result.model_dir
