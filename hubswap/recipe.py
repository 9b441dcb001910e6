"""Recipes: a closed, typed TOML schema (schema_version 1; docs/recipes.md lists every key).

``load_recipe(path)`` parses and validates a recipe and raises one ``RecipeError`` listing every
problem as ``file:line: dotted.key: message``. Nothing is downloaded or written here.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hubswap.errors import RecipeError, RecipeProblem
from hubswap.evaluate.languages import LANGUAGES as MGSM_LANGUAGES

SCHEMA_VERSION = 1
ROLES = ("base", "task", "language")

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_revision(rev: str) -> str:
    """A branch, tag or full commit SHA, following git's ref-name rules."""
    if _SHORT_SHA.match(rev) and not rev.isdigit():
        raise ValueError(
            f"{rev!r} looks like an abbreviated commit; give the full 40-hex SHA (or a branch/tag)"
        )
    bad = (
        not rev
        or rev.startswith(("-", "/", "."))
        or rev.endswith(("/", ".", ".lock"))
        or ".." in rev
        or "//" in rev
        or "@{" in rev
        or any(c.isspace() or c in "~^:?*[\\" or ord(c) < 32 for c in rev)
    )
    if bad:
        raise ValueError(f"{rev!r} is not a valid branch, tag or commit SHA")
    return rev


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelSource(_Strict):
    """Where one model comes from: a Hub ``repo`` at a ``revision``, or a local ``path``."""

    repo: str | None = None
    revision: str | None = None
    path: str | None = None

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        if v is not None and (not _REPO_ID.match(v) or ".." in v or len(v) > 96):
            raise ValueError(f"{v!r} is not a Hub repo id (expected 'org/name')")
        return v

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        return None if v is None else check_revision(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if self.repo and self.path:
            raise ValueError("give either 'repo' or 'path', not both")
        if not self.repo and not self.path:
            raise ValueError("give a Hub 'repo' or a local 'path'")
        if self.path and self.revision:
            raise ValueError("'revision' only applies to a Hub 'repo', not to a local 'path'")
        return self

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def ref(self) -> str:
        """The revision asked for (``main`` when none is given)."""
        return self.revision or "main"

    def display(self) -> str:
        return self.path if self.path else f"{self.repo}@{self.ref}"


class Models(_Strict):
    base: ModelSource | None = None
    task: ModelSource
    language: ModelSource

    def roles(self) -> dict[str, ModelSource]:
        """The models present, in a fixed order (base, task, language)."""
        out = {"base": self.base, "task": self.task, "language": self.language}
        return {k: v for k, v in out.items() if v is not None}


class Swap(_Strict):
    bottom: int = Field(ge=0)
    top: int = Field(ge=0)
    transition: int = Field(default=0, ge=0)
    transition_bottom: int | None = Field(default=None, ge=0)
    transition_top: int | None = Field(default=None, ge=0)
    non_layer: Literal["language", "task"] = "language"
    # The vision side of a multimodal model (vision tower, projector): whole from one expert,
    # by default the one ``non_layer`` names.
    vision: Literal["language", "task"] | None = None
    files_from: Literal["task", "language"] = "task"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    # Share the experts' blocks for tensors taken whole where the filesystem can (hubswap.clone);
    # how the bytes get there, never which bytes: not part of what makes two builds the same.
    clone: bool = True

    @property
    def tb(self) -> int:
        return self.transition if self.transition_bottom is None else self.transition_bottom

    @property
    def tu(self) -> int:
        return self.transition if self.transition_top is None else self.transition_top

    def check_layers(self, num_layers: int) -> None:
        """Raise ``ValueError`` when the swap does not fit in ``num_layers`` layers."""
        used = self.bottom + self.tb + self.tu + self.top
        if used > num_layers:
            raise ValueError(
                f"bottom + transition_bottom + transition_top + top = {self.bottom} + {self.tb} + "
                f"{self.tu} + {self.top} = {used} exceeds the model's {num_layers} layers"
            )
        if used == num_layers:  # as `hubswap sweep` refuses such a configuration
            raise ValueError(
                f"bottom + transition_bottom + transition_top + top = {self.bottom} + {self.tb} + "
                f"{self.tu} + {self.top} = {used} leaves no middle layer of the model's {num_layers} "
                "to the task expert: make bottom, top or the transition smaller"
            )


class EvalConfig(_Strict):
    dataset: str = "juletxara/mgsm"
    dataset_revision: str = "main"
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    prompt: Literal["native-cot", "en-cot", "direct", "chat"] = "native-cot"
    num_fewshot: int = Field(default=8, ge=0, le=8)
    max_new_tokens: int = Field(default=512, gt=0)
    compare: list[Literal["task", "language", "base"]] = Field(
        default_factory=lambda: ["task", "language"]
    )
    baselines: list[Literal["soup"]] = Field(default_factory=list)
    """Other merges of the same experts, built and evaluated beside the swap: ``soup`` is the
    uniform average of the task and language experts (every tensor, weight 1/2 each)."""
    backend: Literal["vllm", "transformers"] = "vllm"
    limit: int = Field(default=0, ge=0)
    seed: int = 0
    batch_size: int = Field(default=16, gt=0)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    """The dtype every model is evaluated in. None: the merged (first) model's dtype, so a float32
    expert is compared in bf16 like a bf16 merge; "auto": each model in the dtype it is stored in."""
    vllm: dict[str, Any] = Field(default_factory=dict)
    gpus: int | Literal["auto"] | None = None
    """How many devices the evaluation may use: ⌊gpus / tensor_parallel_size⌋ engines run at once,
    each in a worker process pinned to its own devices (``evaluate/parallel.py``). "auto": every
    visible GPU. On a machine without a GPU, each "device" is a worker slot: ``gpus = 2`` runs two
    CPU engines at once. None (the default): one engine at a time, on whatever it sees."""

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("gpus must be at least 1 (or \"auto\": every visible GPU)")
        return v

    @field_validator("vllm")
    @classmethod
    def _vllm(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "data_parallel_size" in v:
            # A single-process LLM(data_parallel_size > 1) hangs or is refused (vllm-project/vllm#27282).
            raise ValueError("data_parallel_size is not supported: set [eval] gpus instead (hubswap runs "
                             "one engine per device group and shares the questions out)")
        return v

    @field_validator("dataset_revision")
    @classmethod
    def _revision(cls, v: str) -> str:
        return check_revision(v)

    @field_validator("languages")
    @classmethod
    def _languages(cls, v: list[str]) -> list[str]:
        unknown = [x for x in v if x not in MGSM_LANGUAGES]
        if unknown:
            raise ValueError(f"unknown MGSM language(s) {unknown}; choose from {list(MGSM_LANGUAGES)}")
        if len(set(v)) != len(v):
            raise ValueError("languages must not repeat")
        return v

    @property
    def target_language(self) -> str:
        return self.languages[0]

    def default_languages_note(self) -> str | None:
        """One line for a recipe that leaves ``languages`` out: the evaluation is then English only,
        whatever language the merge is for, and the user should hear that."""
        if "languages" in self.model_fields_set:
            return None
        return (f"[eval] languages is not set: evaluating MGSM in {', '.join(self.languages)} only (the default), "
                "not in the language expert's language; set e.g. languages = [\"sw\", \"en\"] (the target first)")


class Gate(_Strict):
    must_beat: list[Literal["task", "language", "base", "soup"]] = Field(
        default_factory=lambda: ["task", "language"]
    )
    margin: float = 0.0
    min_accuracy: float = Field(default=0.0, ge=0.0, le=1.0)
    min_target_language_share: float | None = Field(default=None, ge=0.0, le=1.0)
    """The least share of the merged model's target-language answers written in that language."""


class Publish(_Strict):
    repo: str
    private: bool = True
    license: str | None = None
    """The Hub's licence id; None: inherited from the parents when they agree (hubswap.licenses)."""
    license_name: str | None = None  # with license = "other"
    license_link: str | None = None
    license_acknowledged: bool = False
    """The recipe's licence stands although the parents' licences differ or say otherwise."""
    card: str | None = None
    """A card template extending the packaged one (relative to the recipe), e.g. model_cards/x.md.j2."""

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        if not _REPO_ID.match(v) or "/" not in v:
            raise ValueError(f"{v!r} is not a Hub repo id (expected 'org/name')")
        return v

    @field_validator("license")
    @classmethod
    def _license_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", v):
            raise ValueError(f"{v!r} is not a Hub licence id (such as 'apache-2.0', 'llama3.1' or 'other')")
        return v

    @model_validator(mode="after")
    def _license_keys(self) -> Publish:
        if self.license == "other" and not self.license_name:
            raise ValueError("license = \"other\" needs license_name (and license_link to its text)")
        if self.license != "other" and (self.license_name or self.license_link):
            raise ValueError("license_name and license_link go with license = \"other\"")
        if self.license_acknowledged and not self.license:
            raise ValueError("license_acknowledged = true acknowledges the recipe's license: state it")
        return self


class Recipe(_Strict):
    schema_version: Literal[1]
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    models: Models
    swap: Swap
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: Gate = Field(default_factory=Gate)
    publish: Publish | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        missing = [r for r in set(self.eval.compare) | set(self.gate.must_beat) if r == "base"]
        if missing and self.models.base is None:
            raise ValueError("'base' is compared or gated on but [models.base] is not given")
        evaluated = [*self.eval.compare, *self.eval.baselines]
        not_compared = [r for r in self.gate.must_beat if r not in evaluated]
        if not_compared:
            raise ValueError(f"gate.must_beat names {not_compared}, which neither eval.compare nor "
                             "eval.baselines evaluates")
        if len(set(self.eval.baselines)) != len(self.eval.baselines):
            raise ValueError("eval.baselines must not repeat")
        return self


class LoadedRecipe:
    """A validated recipe together with where it came from (for messages and the lock)."""

    def __init__(self, recipe: Recipe, path: Path, text: str, lines: dict[str, int]):
        self.recipe = recipe
        self.path = path
        self.text = text
        self._lines = lines

    def line_of(self, key: str) -> int | None:
        return _line_for(self._lines, key)

    def problem(self, key: str, message: str) -> RecipeProblem:
        return RecipeProblem(str(self.path), self.line_of(key), key, message)

    def resolve_path(self, source: ModelSource) -> Path:
        """A local model path, relative to the recipe's folder."""
        assert source.path is not None
        p = Path(source.path).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def card_template(self) -> Path | None:
        """The recipe's card template (``[publish] card``, relative to the recipe), or None.

        A build keeps its copy as ``hubswap/card.md.j2`` beside ``hubswap/recipe.toml``, so that
        copy stands in when the recipe is a build's (a published model downloaded and rebuilt)."""
        pub = self.recipe.publish
        if pub is None or pub.card is None:
            return None
        p = Path(pub.card).expanduser()
        p = p if p.is_absolute() else self.path.parent / p
        if p.is_file():
            return p
        if (copy := self.path.parent / "card.md.j2").is_file():
            return copy
        raise RecipeError([self.problem("publish.card", f"no such file: {p}")])

    def check_layers(self, num_layers: int) -> None:
        """Raise ``RecipeError`` if the swap does not fit a model of ``num_layers`` layers."""
        try:
            self.recipe.swap.check_layers(num_layers)
        except ValueError as e:
            raise RecipeError([self.problem("swap", str(e))]) from None


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe; raise ``RecipeError`` with every problem found."""
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([RecipeProblem(shown, None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError([RecipeProblem(shown, None, "", f"cannot read: {e}")]) from None
    return parse_recipe(text, path)


def parse_recipe(text: str, path: Path) -> LoadedRecipe:
    shown = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise RecipeError([RecipeProblem(shown, int(m.group(1)) if m else None, "", f"TOML syntax: {msg}")]) from None
    lines = key_lines(text)
    if "schema_version" in data and data["schema_version"] != SCHEMA_VERSION:
        raise RecipeError([RecipeProblem(
            shown, _line_for(lines, "schema_version"), "schema_version",
            f"this hubswap reads schema_version {SCHEMA_VERSION}, the recipe has {data['schema_version']!r}",
        )])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_problems(e, data, lines, shown)) from None
    return LoadedRecipe(recipe, path, text, lines)


def _problems(err: ValidationError, data: dict, lines: dict[str, int], shown: str) -> list[RecipeProblem]:
    out = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        key = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(loc)
        elif e["type"] == "missing":
            msg = "required key is missing"
        out.append(RecipeProblem(shown, _line_for(lines, key), key, msg))
    seen, unique = set(), []
    for p in out:  # a union can report one mistake twice
        if str(p) not in seen:
            seen.add(str(p))
            unique.append(p)
    return sorted(unique, key=lambda p: (p.line or 0, p.key))


def _suggest(loc: list) -> str:
    """' (did you mean 'revision'?)' for a misspelt key, from the schema's own field names."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return ""
        model = candidates[0]
    close = difflib.get_close_matches(str(loc[-1]), list(getattr(model, "model_fields", {})), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# tomllib gives values but no positions, and no maintained TOML library exposes line numbers for
# keys; this scanner maps each dotted key to the line that defines it, for error messages only.
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEYVAL = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _split_key(k: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", k)]


def key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    table: list[str] = []
    depth = 0  # inside a multi-line array or string: skip
    for n, raw in enumerate(text.splitlines(), start=1):
        if depth:
            depth += raw.count("[") - raw.count("]")
            depth = max(depth, 0)
            continue
        if m := _HEADER.match(raw):
            table = _split_key(m.group(1))
            for k in range(1, len(table) + 1):  # [models.base] also locates `models`
                lines.setdefault(".".join(table[:k]), n)
            continue
        if m := _KEYVAL.match(raw):
            key = ".".join([*table, *_split_key(m.group(1))])
            lines.setdefault(key, n)
            rest = raw[m.end():].split("#", 1)[0]
            depth = max(rest.count("[") - rest.count("]"), 0)
    return lines


def _line_for(lines: dict[str, int], key: str) -> int | None:
    """The line of ``key`` or of its nearest enclosing table that the file defines."""
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    while parts:
        if (line := lines.get(".".join(parts))) is not None:
            return line
        parts.pop()
    return None
