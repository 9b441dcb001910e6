"""``eval_results.json`` as a typed record: what ``run_evaluation`` returns and the card, gate,
report and sweep read.

    EvalResults
      results_version   2
      settings          how the questions were asked and scored (Settings)
      versions          tool versions of the evaluation
      hardware          where it ran
      models            per model: where it came from, the cache, per language its scores (LanguageScores)
      reference_model   the model the others are compared with ("merged" in a build)
      comparisons       per other model and language: the paired difference (stats.Paired)
      gate              the gate's verdict (GateRecord), once a build has judged it
      workers           the engines run at once ([eval] gpus, Workers); null for one at a time

Per-question verdicts travel with the object (``verdicts``, not written: the jsonl files under
``eval/`` hold the questions) so that the sweep pairs models without reading those files back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from hubswap.errors import ModelFilesError
from hubswap.evaluate.stats import Paired
from hubswap.files import write_json
from hubswap.records import Record, load_record

RESULTS_VERSION = 2  # 2: LanguageScores.target_language_share, ScoreMethods.target_language_share


class ScoreMethods(Record):
    accuracy: str
    strict_match: str
    flexible_extract: str
    ci95: str
    comparison_ci95: str
    target_language_share: str


class Settings(Record):
    dataset: str
    dataset_revision: str | None
    dataset_revisions: dict[str, str]
    hub_dataset: str | None  # MGSM's Hub id; None for a local folder of other questions in its layout
    languages: list[str]
    target_language: str
    prompt: str
    num_fewshot: int
    fewshot_seed: int
    max_new_tokens: int
    backend: str
    dtype: str  # every model's evaluation dtype ("auto": each its own)
    batch_size: int | None
    limit: int
    questions: dict[str, int]
    subset: list[int] | None = None  # positions of the questions asked, when not all (a sweep's half)
    seed: int
    greedy: bool
    vllm: dict[str, Any] | None
    vllm_cpu_defaults: dict[str, Any] | None
    scores: ScoreMethods


class Hardware(Record):
    device: str
    gpu: str | None
    gpu_count: int
    cpu: str
    cpu_count: int | None
    platform: str


class LanguageScores(Record):
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    strict_match: float
    flexible_extract: float
    truncation_rate: float
    no_answer_rate: float
    mean_generated_tokens: float
    target_language_share: float | None
    """Share of the answers with letters that are written in this language (``answer_language``);
    None when no answer had any."""


class ModelResult(Record):
    source: str
    cache_key: str | None
    cached: bool
    cached_languages: list[str]
    engine: dict[str, Any] | None
    languages: dict[str, LanguageScores]
    shares: list[int] | None = None
    """Data parallel: the sizes of the contiguous shares of its prompts (in prompt order, every
    language one after another) that workers generated at once; null when one worker made them."""


class Workers(Record):
    """``[eval] gpus``: how many engines ran at once, and the devices each one saw."""

    count: int
    devices: list[str | None]  # each worker's CUDA_VISIBLE_DEVICES (null: a CPU worker slot)
    tensor_parallel_size: int


class GateRecord(Record):
    passed: bool
    reasons: list[str]
    checks: list[str]
    must_beat: list[str]
    margin: float
    min_accuracy: float
    target_language: str | None
    accuracy: float | None
    min_target_language_share: float | None
    target_language_share: float | None


class EvalResults(Record):
    results_version: Literal[2] = RESULTS_VERSION
    settings: Settings
    versions: dict[str, str | None]
    hardware: Hardware
    models: dict[str, ModelResult]
    reference_model: str
    comparisons: dict[str, dict[str, Paired]]  # reference - other, on the same questions
    gate: GateRecord | None = None
    workers: Workers | None = None
    verdicts: dict[str, dict[str, list[bool]]] = Field(default_factory=dict, exclude=True)
    """Per model and language, each question's robust verdict in question order (not written)."""

    def scores(self, model: str, lang: str) -> LanguageScores | None:
        m = self.models.get(model)
        return m.languages.get(lang) if m is not None else None

    def write(self, path: Path) -> Path:
        return write_json(path, self.to_json())


def read_eval_results(path: Path) -> EvalResults:
    return load_record(path, EvalResults, version_key="results_version", version=RESULTS_VERSION,
                       what="hubswap evaluation results", error=ModelFilesError,
                       hint="evaluate the model again with this hubswap")
