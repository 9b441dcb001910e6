"""The documents hubswap writes about models and builds, as typed records (pydantic, like the recipe).

Two documents pin inputs, and they are not the same:

    <recipe stem>.lock.json     RecipeLock: the recipe's models pinned (``hubswap lock``; hub.lock)
    <build>/model/hubswap/      what a build keeps about itself:
        recipe.toml             the recipe as given
        lock.json               BuildRecord: the inputs as the build read them, layer map, outputs, versions,
                                the licence decision
        recipe.lock.json        RecipeLock: the recipe's lock as the build used it (``hubswap build
                                hubswap/recipe.toml`` and ``hubswap verify`` rebuild from it)
        eval_results.json       EvalResults (hubswap.evaluate.results), once evaluated

Each record carries a version field; a file of another version (or of none) is refused with a
message naming it. Readers use fields, never ``.get(...) or {}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from hubswap.errors import HubswapError, LockMismatchError, ModelFilesError

RECORDS_DIR = "hubswap"
RECIPE_COPY = f"{RECORDS_DIR}/recipe.toml"
BUILD_RECORD = f"{RECORDS_DIR}/lock.json"
PUBLISHED_LOCK = f"{RECORDS_DIR}/recipe.lock.json"
CARD_TEMPLATE = f"{RECORDS_DIR}/card.md.j2"
EVAL_RESULTS = f"{RECORDS_DIR}/eval_results.json"

LOCK_VERSION = 1  # of both lock documents: RecipeLock and BuildRecord

R = TypeVar("R", bound=BaseModel)


class Record(BaseModel):
    """A record as written: closed (an unknown key is an error), frozen once read; a file is read
    strictly (JSON's own types, no coercion)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


class FileEntry(Record):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class ModelEntry(Record):
    """One input model pinned: a Hub repo at a commit, or a local folder; its files' hashes."""

    repo: str | None
    revision: str | None
    commit: str | None = Field(pattern=r"^[0-9a-f]{40}$")
    path: str | None
    files: dict[str, FileEntry]

    @field_validator("files")
    @classmethod
    def _inside_the_folder(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in v:
            if not name or name.startswith("/") or "\\" in name or ".." in name.split("/"):
                raise ValueError(f"{name!r} is not a file inside the model folder")
        return v

    @property
    def display(self) -> str:
        return self.path or f"{self.repo}@{self.revision}"


class RecipeRef(Record):
    path: str
    name: str
    sha256: str


class RecipeLock(Record):
    """``<recipe stem>.lock.json``: every model of a recipe pinned, written by ``hubswap lock``."""

    lock_version: Literal[1]
    hubswap_version: str
    recipe: RecipeRef
    models: dict[str, ModelEntry]


class LayerRecord(Record):
    index: int
    region: str
    source: Literal["task", "language", "blend"]
    language_weight: float
    task_weight: float


class LayerMapRecord(Record):
    num_layers: int
    non_layer: Literal["task", "language"]
    layers: list[LayerRecord]
    stack: str | None = None  # the layer stack's tensor prefix
    vision: Literal["task", "language"] | None = None  # multimodal models only
    modules: dict[str, list[str]] | None = None  # the top modules of each whole part

    @model_serializer(mode="wrap")
    def _without_absent(self, handler):
        return {k: v for k, v in handler(self).items() if not (k in ("stack", "vision", "modules") and v is None)}


class OutputFile(Record):
    size: int
    sha256: str | None = None
    """Not written by builds (publishing hashes every file); a record that has it keeps it."""

    @model_serializer(mode="wrap")
    def _without_missing_hash(self, handler):
        return {k: v for k, v in handler(self).items() if not (k == "sha256" and v is None)}


class MergeBytes(Record):
    """How the merge made the tensors' bytes: cloned (blocks shared with an expert's file, on a
    filesystem that clones: hubswap.clone), copied, blended, cast."""

    cloned: int = Field(ge=0)
    copied: int = Field(ge=0)
    blended: int = Field(ge=0)
    cast: int = Field(ge=0)

    def summary(self) -> str:
        """``2.3 GB cloned, 4.1 MB copied, 160.4 MB blended, 0 B cast``"""
        from hubswap.files import human_size

        return ", ".join(f"{human_size(getattr(self, k))} {k}" for k in ("cloned", "copied", "blended", "cast"))


class Output(Record):
    dtype: str
    num_layers: int
    shards: list[str]
    files: dict[str, OutputFile]
    merge: MergeBytes | None = None
    """Absent from records written before hubswap said how it made the bytes."""
    max_shard_size: int | None = None  # bytes (--max-shard-size), so that a rebuild shards alike

    @model_serializer(mode="wrap")
    def _without_absent(self, handler):
        return {k: v for k, v in handler(self).items() if not (k in ("merge", "max_shard_size") and v is None)}


class ParentLicense(Record):
    """What a parent's card says about its terms (``huggingface_hub.ModelCard`` metadata)."""

    license: str | None
    license_name: str | None
    license_link: str | None
    datasets: list[str]
    files: list[str]  # its licence files (LICENSE, USE_POLICY.md, NOTICE, ...)


class LicenseRecord(Record):
    """The merge's licence (hubswap.licenses): the decision, from what, and what it obliges to."""

    license: str | None
    license_name: str | None
    license_link: str | None
    decision: Literal["inherited", "recipe", "acknowledged", "none"]
    parents: dict[str, ParentLicense]
    built_with: list[str]  # attributions the licences ask to show prominently
    notice: list[str]  # lines the licences ask for in a Notice file
    obligations: list[str]
    warnings: list[str]
    files: dict[str, str]  # licence file in the model folder -> where it came from


class BuildRecord(Record):
    """``<build>/model/hubswap/lock.json``: what the build read, what it wrote, with what."""

    lock_version: Literal[1]
    hubswap_version: str
    created: str
    recipe: RecipeRef
    models: dict[str, ModelEntry]
    layer_map: LayerMapRecord
    output: Output
    versions: dict[str, str | None]
    license: LicenseRecord | None = None  # builds before licences were read have none

    @model_serializer(mode="wrap")
    def _without_absent_license(self, handler):
        return {k: v for k, v in handler(self).items() if not (k == "license" and v is None)}


def load_record(path: Path, model: type[R], *, version_key: str, version: int, what: str,
                error: type[HubswapError] = ModelFilesError, hint: str | None = None) -> R:
    """Read and validate a record. A file that is not JSON, of another version (or of none), or
    that does not fit the schema raises ``error`` with one line naming the file and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}", hint=hint) from None
    except (OSError, ValueError) as e:
        raise error(f"{path}: cannot read {what} ({e})", hint=hint) from None
    if not isinstance(data, dict):
        raise error(f"{path}: not {what}: a JSON {type(data).__name__}, not an object", hint=hint)
    if data.get(version_key) != version:
        found = (f"{version_key} {data[version_key]!r}" if version_key in data
                 else f"no {version_key} (written by an older hubswap)")
        raise error(f"{path}: {found}; this hubswap reads {version_key} {version}", hint=hint)
    try:
        return model.model_validate_json(text, strict=True)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        where = ".".join(str(p) for p in errors[0]["loc"]) or "the document"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise error(f"{path}: not {what}: {where}: {errors[0]['msg']}{more}", hint=hint) from None


def read_build_record(model_dir: Path) -> BuildRecord:
    return load_record(model_dir / BUILD_RECORD, BuildRecord, version_key="lock_version", version=LOCK_VERSION,
                       what="a hubswap build record", error=LockMismatchError,
                       hint="rebuild it with this hubswap (`hubswap build RECIPE`)")


def find_model_dir(path: str | Path) -> Path:
    """The model folder of a build: ``path`` itself or ``path/model``, whichever holds a build record."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / BUILD_RECORD).is_file():
            return candidate
    # A usage mistake (exit 1), not a corrupt model: the folder is simply something else.
    hint = "pass the build folder that `hubswap build` wrote (or its model/ folder)"
    if not path.exists():
        raise HubswapError(f"{path} does not exist", hint=hint)
    raise HubswapError(f"{path} is not a hubswap build: no {BUILD_RECORD} in it or in its model/ folder", hint=hint)
