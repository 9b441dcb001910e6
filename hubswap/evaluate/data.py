"""MGSM through ``datasets``: the Hub dataset ``juletxara/mgsm`` or a local folder of its layout.

A local folder (``<lang>/test.jsonl``, ``<lang>/train.jsonl`` and a README declaring the configs,
like ``../shared/mgsm``) is loaded with the same ``datasets.load_dataset(path, lang)`` call as the
Hub id, so both paths run the same code. For a local folder the "revision" recorded is a content
hash of the files read, so cached results notice an edited copy.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hubswap.errors import EvaluationError

log = logging.getLogger(__name__)

HUB_DATASET = "juletxara/mgsm"


@dataclass(frozen=True)
class Question:
    index: int
    question: str
    answer_number: int | float


@dataclass(frozen=True)
class Exemplar:
    question: str
    """Starts with the language's question cue, as in the dataset."""
    answer: str
    """Starts with the language's step-by-step cue, as in the dataset."""
    answer_number: int | float


@dataclass(frozen=True)
class LanguageData:
    lang: str
    test: tuple[Question, ...]
    train: tuple[Exemplar, ...]
    revision: str
    """The Hub revision asked for, or ``sha256:<hex>`` of a local folder's files."""


def is_local(dataset: str | Path) -> bool:
    p = Path(dataset).expanduser()
    return p.is_absolute() or str(dataset).startswith((".", "~")) or p.is_dir()


def local_revision(root: Path, lang: str) -> str:
    h = hashlib.sha256()
    for part in ("test", "train"):
        for f in sorted((root / lang).glob(f"{part}*")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


@lru_cache(maxsize=8)
def resolve_hub_revision(repo: str, revision: str) -> str:
    """The commit SHA of a Hub dataset revision, so results (and the cache) name exact data.

    Offline or without access, the revision stays as given and ``load_dataset`` decides.
    """
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo, revision=revision).sha or revision
    except Exception as e:  # offline, gated, unknown: loading will say what is wrong
        log.debug("cannot resolve %s@%s to a commit: %s", repo, revision, e)
        return revision


def load_language(dataset: str | Path, lang: str, *, revision: str = "main") -> LanguageData:
    """The test questions and the 8 exemplars of one MGSM language."""
    local = is_local(dataset)
    if local:
        root = Path(dataset).expanduser().resolve()
        if not (root / lang).is_dir():
            raise EvaluationError(
                f"MGSM folder {root} has no {lang}/ split",
                hint="expected the layout of juletxara/mgsm: <lang>/test.jsonl and <lang>/train.jsonl",
            )
        source, kwargs, rev = str(root), {}, local_revision(root, lang)
    else:
        rev = resolve_hub_revision(str(dataset), revision)
        source, kwargs = str(dataset), {"revision": rev}
    try:
        import datasets
    except ImportError:
        raise EvaluationError(
            "the 'datasets' library is not installed", hint='pip install "hubswap[eval]"'
        ) from None
    try:
        ds = datasets.load_dataset(source, lang, **kwargs)
    except Exception as e:  # datasets raises many types (FileNotFound, ConnectionError, ValueError)
        hint = "check the dataset id, revision and HF_HUB_OFFLINE; or point [eval].dataset to a local copy"
        if "scripts are no longer supported" in str(e):
            hint = ("this datasets version cannot run loading scripts: use revision "
                    "'refs/convert/parquet' of the Hub dataset, or a local copy")
        raise EvaluationError(f"cannot load MGSM {lang!r} from {source}: {e}", hint=hint) from None
    for split in ("test", "train"):
        if split not in ds:
            raise EvaluationError(f"MGSM {lang!r} from {source} has no {split!r} split")
    test = tuple(Question(i, r["question"], r["answer_number"]) for i, r in enumerate(ds["test"]))
    train = tuple(Exemplar(r["question"], r["answer"], r["answer_number"]) for r in ds["train"])
    log.debug("MGSM %s: %d test questions, %d exemplars from %s", lang, len(test), len(train), source)
    return LanguageData(lang, test, train, rev)
