"""MGSM through ``datasets``: the Hub dataset ``juletxara/mgsm`` or a local folder of its layout.

A local folder (``<lang>/test.jsonl``, ``<lang>/train.jsonl`` and a README declaring the configs,
like ``../shared/mgsm``) is loaded with the same ``datasets.load_dataset(path, lang)`` call as the
Hub id, so both paths run the same code. For a local folder the "revision" recorded is a content
hash of the files read, so cached results notice an edited copy.

``juletxara/mgsm`` was published as a loading script (``mgsm.py`` over TSV files), which
``datasets`` 4 and later refuse to run. When a Hub revision holds a script, the data is read from
the Hub's own parquet conversion of it (``refs/convert/parquet``: ``<lang>/<split>/*.parquet``) and
that branch's commit is what the results record. Every exemplar must start with the language's
cues: lm-eval (and hubswap's prompts) cut them off by length, so a mirror that dropped them would
silently garble every prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hubswap.errors import EvaluationError
from hubswap.files import atomic_write

log = logging.getLogger(__name__)

HUB_DATASET = "juletxara/mgsm"
PARQUET_REVISION = "refs/convert/parquet"
TEST_QUESTIONS = 250  # per language
# MGSM's own test questions, per language: the first 16 hex digits of the sha256 of their
# (question, answer_number) rows in order (``questions_fingerprint``; computed from ../shared/mgsm,
# a copy of juletxara/mgsm). A local folder whose questions match holds MGSM, and the model card
# indexes its scores as MGSM's; one whose questions differ (the demo world's, a translation of
# one's own) is only in MGSM's layout, and its scores are not claimed as MGSM's.
MGSM_QUESTIONS = {
    "bn": "68af6df7095f7a4b", "de": "6974b0d0202c4915", "en": "2cb3bfcc40c3a4eb", "es": "0c0425e8a9b76995",
    "fr": "6be6161886b60b64", "ja": "056904f7640d8dd1", "ru": "fdebd767b942c951", "sw": "e84d26449d2aab38",
    "te": "7467abff8a0d13c8", "th": "0afb9edfb13f56d5", "zh": "756bf9778b4a7c9c",
}


@dataclass(frozen=True)
class Question:
    index: int
    question: str
    answer_number: int | float
    doc: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """The test row as the dataset holds it (lm-eval's ``doc``, hashed into its ``doc_hash``)."""


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


def questions_fingerprint(test: tuple[Question, ...]) -> str:
    """What :data:`MGSM_QUESTIONS` holds for a language: its test questions and answers, in order
    (by content: the same rows read from JSON lines, parquet or a script give the same value)."""
    rows = [[q.question, float(q.answer_number)] for q in test]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def holds_mgsm(data: LanguageData) -> bool:
    """Whether ``data``'s test split is MGSM's own, question for question."""
    return MGSM_QUESTIONS.get(data.lang) == questions_fingerprint(data.test)


def local_revision(root: Path, lang: str) -> str:
    h = hashlib.sha256()
    for part in ("test", "train"):
        for f in sorted((root / lang).glob(f"{part}*")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


@lru_cache(maxsize=8)
def resolve_hub_revision(repo: str, revision: str) -> tuple[str, bool]:
    """``(commit SHA, holds a loading script)`` of a Hub dataset revision, so results (and the
    cache) name exact data.

    Offline or without access, the revision stays as given and ``load_dataset`` decides.
    """
    try:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(repo, revision=revision)
    except Exception as e:  # offline, gated, unknown: loading will say what is wrong
        log.debug("cannot resolve %s@%s to a commit: %s", repo, revision, e)
        return revision, False
    script = f"{repo.split('/')[-1]}.py"
    return info.sha or revision, any(s.rfilename == script for s in info.siblings or ())


def check_hub_reachable() -> None:
    """A Hub that cannot be reached is one line at once, not ``datasets``' retries."""
    from huggingface_hub import constants

    from hubswap.errors import HubError
    from hubswap.hub.errors import check_reachable

    try:
        check_reachable(constants.ENDPOINT.rstrip("/"))
    except HubError as e:
        e.hint = f"{e.hint}; or evaluate on a local copy of MGSM (`python scripts/mgsm.py fetch DIR`, then " \
                 "--dataset DIR or [eval].dataset)"
        raise


def load_language(dataset: str | Path, lang: str, *, revision: str = "main") -> LanguageData:
    """The test questions and the 8 exemplars of one MGSM language."""
    ds, source, rev = load_splits(dataset, lang, revision=revision)
    test = tuple(Question(i, r["question"], r["answer_number"], dict(r)) for i, r in enumerate(ds["test"]))
    train = tuple(Exemplar(r["question"], r["answer"], r["answer_number"]) for r in ds["train"])
    check_exemplars(lang, train, source)
    log.debug("MGSM %s: %d test questions, %d exemplars from %s", lang, len(test), len(train), source)
    return LanguageData(lang, test, train, rev)


def load_splits(dataset: str | Path, lang: str, *, revision: str = "main"):
    """``(DatasetDict with test and train, source, revision)`` of one language, local or Hub."""
    local = is_local(dataset)
    if local:
        root = Path(dataset).expanduser().resolve()
        if not (root / lang).is_dir():
            raise EvaluationError(
                f"MGSM folder {root} has no {lang}/ split",
                hint="expected the layout of juletxara/mgsm: <lang>/test.jsonl and <lang>/train.jsonl",
            )
        # Rebuilt from the files at every load (250 rows: milliseconds): datasets' cache of a local
        # folder missed an edit made within the same second, keeping the old rows under the new
        # revision this records.
        source, kwargs, rev = str(root), {"download_mode": "force_redownload"}, local_revision(root, lang)
    else:
        source = str(dataset)
        check_hub_reachable()
        rev, script = resolve_hub_revision(source, revision)
        kwargs = {"revision": rev}
        if script:  # read the Hub's parquet conversion of the same dataset instead
            rev, _ = resolve_hub_revision(source, PARQUET_REVISION)
            log.info("%s@%s is a loading-script dataset; reading its parquet conversion %s@%s",
                     source, revision, PARQUET_REVISION, rev[:12])
            kwargs = {"data_dir": lang, "revision": rev}
    datasets = _datasets()
    quiet = not datasets.utils.are_progress_bars_disabled()  # ("Generating test split": 250 rows, no wait)
    if quiet:
        datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(source, None if "data_dir" in kwargs else lang, **kwargs)
    except Exception as e:  # datasets raises many types (FileNotFound, ConnectionError, ValueError)
        raise _load_error(lang, source, e) from None
    finally:
        if quiet:  # as the caller had it (hubswap used as a library)
            datasets.enable_progress_bars()
    for split in ("test", "train"):
        if split not in ds:
            raise EvaluationError(f"MGSM {lang!r} from {source} has no {split!r} split")
    return ds, source, rev


def _datasets():
    try:
        import datasets
    except ImportError:
        raise EvaluationError(
            "the 'datasets' library is not installed", hint='pip install "hubswap[eval]"'
        ) from None
    return datasets


def _load_error(lang: str, source: str, e: Exception) -> EvaluationError:
    hint = ("check the dataset id, revision and HF_HUB_OFFLINE; or point [eval].dataset to a local copy "
            "(python scripts/mgsm.py fetch DIR makes one)")
    if "scripts are no longer supported" in str(e):
        hint = "this datasets version cannot run loading scripts: use a local copy in the layout of juletxara/mgsm"
    reason = str(e) if len(str(e)) < 300 else str(e)[:300] + " ..."  # datasets lists every extension it knows
    return EvaluationError(f"cannot load MGSM {lang!r} from {source}: {reason}", hint=hint)


def check_exemplars(lang: str, train: tuple[Exemplar, ...], source: str) -> None:
    """Refuse exemplars without the language's question and step-by-step cues (see the module doc)."""
    from hubswap.evaluate.languages import LANGUAGES

    def squash(text: str) -> str:  # the data writes some cues with full-width colons or a space more
        return "".join(unicodedata.normalize("NFKC", text).split())

    spec = LANGUAGES.get(lang)
    if spec is None:
        return
    for i, ex in enumerate(train):
        for field, cue, text in (("question", spec.question, ex.question), ("answer", spec.cot_answer, ex.answer)):
            if not squash(text[: len(cue) + 8]).startswith(squash(cue)):
                raise EvaluationError(
                    f"MGSM {lang!r} from {source}: exemplar {i} {field} does not start with {cue!r} "
                    f"(it starts {text[:40]!r})",
                    hint="the exemplars must keep MGSM's cue prefixes; use the juletxara/mgsm data unchanged",
                )


def write_local(dest: Path, splits: dict[str, dict[str, list[dict]]], *, title: str) -> None:
    """Write ``{lang: {"test": rows, "train": rows}}`` into ``dest`` in the layout of
    juletxara/mgsm, with a README declaring one config per language (what ``load_language`` reads
    back). Files already there for other languages are kept out of the README: it lists ``splits``."""
    dest.mkdir(parents=True, exist_ok=True)
    configs = []
    for lang, parts in splits.items():
        (dest / lang).mkdir(exist_ok=True)
        for split, rows in parts.items():
            atomic_write(dest / lang / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        configs.append(f"- config_name: {lang}\n  data_files:\n" + "".join(
            f"  - split: {split}\n    path: {lang}/{split}.jsonl\n" for split in parts))
    (dest / "README.md").write_text(f"---\npretty_name: {title}\nconfigs:\n{''.join(configs)}---\n",
                                    encoding="utf-8")
