"""The sweep's evaluation job (``sweeps.py`` is the command): its grid points (``Config``), both
experts once on every question, then each configuration merged into scratch, scored on the questions it is asked, and removed
unless ``--keep``; what each configuration cost. All in one worker session: on vLLM, one engine
takes each configuration's weights in turn (``evaluate/worker.py``, ``WorkerSession``).

Generations are cached by content: an expert by its inputs' key, a configuration by the experts'
keys and its ``[swap]`` (a merge is a pure function of them), so a sweep run again, or widened,
generates only what is new.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubswap import __version__
from hubswap.evaluate.worker import WorkerSession
from hubswap.hashing import json_sha256
from hubswap.inputs import EXPERTS
from hubswap.layermap import layer_map

if TYPE_CHECKING:
    from hubswap.recipe import Swap

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Config:
    bottom: int
    top: int
    transition: int

    @property
    def name(self) -> str:
        return f"b{self.bottom}-u{self.top}-t{self.transition}"

    def swap(self, base: Swap) -> Swap:
        """The recipe's ``[swap]`` with this grid point (one transition size for both sides)."""
        return base.model_copy(update={
            "bottom": self.bottom, "top": self.top, "transition": self.transition,
            "transition_bottom": None, "transition_top": None,
        })


@dataclass(frozen=True)
class Cost:
    """What one configuration cost: its merge, and its evaluation on ``questions`` questions."""

    merge_s: float
    eval_s: float
    questions: int

    @property
    def total_s(self) -> float:
        return self.merge_s + self.eval_s

    def to_json(self) -> dict:
        return {"merge_s": round(self.merge_s, 3), "eval_s": round(self.eval_s, 3), "questions": self.questions}


class ConfigScorer:
    """Scores the experts and the sweep's configurations on the target language; ``verdicts`` maps
    each one's name to per-question correctness, indexed by question (``None`` where not asked)."""

    def __init__(self, base: Swap, pre, dirs: dict[str, Path], keys: dict[str, str], cfg, eval_dir: Path,
                 scratch: Path, *, dataset: str, limit: int | None, keep: bool, max_shard_size: str | int,
                 progress: bool, devices: str | None = None):
        from hubswap.files import parse_size

        self.base, self.pre, self.dirs, self.keys, self.cfg = base, pre, dirs, keys, cfg
        self.eval_dir, self.scratch, self.dataset, self.limit = eval_dir, scratch, dataset, limit
        self.keep, self.shard, self.progress = keep, parse_size(max_shard_size), progress
        self.verdicts: dict[str, list[bool | None]] = {}
        self.n = 0
        # One vLLM engine for the whole sweep: a configuration that differs from the last only in
        # its weights is loaded into the running engine (worker.WorkerSession).
        # With [eval] gpus (more than one engine at once), each evaluation shares its questions out
        # among fresh workers instead (evaluate/parallel.py).
        self.session = WorkerSession(reuse=True, devices=devices) if cfg.gpus in (None, 1) else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop the worker; remove the scratch folder if nothing is kept in it."""
        if self.session is not None:
            self.session.close()
        if not self.keep and self.scratch.exists() and not any(self.scratch.iterdir()):
            self.scratch.rmdir()

    def experts(self) -> dict[str, list[bool | None]]:
        """Both experts on every question; returns ``verdicts``."""
        got = self.evaluate({role: self.dirs[role] for role in EXPERTS}, self.keys)
        self.verdicts.update(got)
        self.n = len(got["task"])
        return self.verdicts

    def score_all(self, configs: list[Config], questions: list[int]) -> dict[str, Cost]:
        """Every configuration in turn on ``questions`` (the selection half); what each cost."""
        costs: dict[str, Cost] = {}
        for k, c in enumerate(configs, 1):
            log.info("[%d/%d] %s: %s", k, len(configs), c.name,
                     layer_map(c.swap(self.base), self.pre.num_layers).picture())
            cost = costs[c.name] = self.score(c, questions, c.name)
            log.info("[%d/%d] %s: merge %.1f s, evaluation %.1f s on %d questions", k, len(configs), c.name,
                     cost.merge_s, cost.eval_s, len(questions))
        return costs

    def score(self, c: Config, questions: list[int], name: str) -> Cost:
        """Merge ``c`` (or take it from scratch, kept by ``--keep``) and evaluate it as ``name`` on
        ``questions``; its verdicts go into ``verdicts[c.name]``."""
        from hubswap.swap import copy_side_files, lay_out, merge, plan_merge

        swap = c.swap(self.base)
        folder = self.scratch / c.name
        t0 = time.perf_counter()
        if not (self.keep and (folder / "model.safetensors.index.json").is_file()):  # (kept from step 3)
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            pre = self.pre
            plan = plan_merge(layer_map(swap, pre.num_layers, pre.stack), pre.tensors, self.dirs,
                              out_dtype=self.base.dtype, max_shard_size=self.shard)
            # Scratch: read, then deleted; cloned where it can be, so it takes disk for what is computed only.
            plan = lay_out(plan, folder, clone=self.base.clone)
            made = merge(plan, folder, progress=self.progress, durable=False)
            log.info("%s: %s", c.name, made.summary())
            copy_side_files(self.dirs[self.base.files_from], folder, self.base.dtype)
        t1 = time.perf_counter()
        try:
            # A merge is a pure function of the experts and the [swap]: key its generations by
            # them, so a sweep run again (or widened) generates only the new configurations.
            key = json_sha256([__version__, self.keys["task"], self.keys["language"], swap.model_dump(exclude={"clone"})])
            got = self.evaluate({name: folder}, {name: f"swap-{key}"}, questions)
        finally:
            if not self.keep:
                shutil.rmtree(folder, ignore_errors=True)
        v = self.verdicts.setdefault(c.name, [None] * self.n)
        for i, ok in zip(questions, got[name], strict=True):
            v[i] = ok
        return Cost(t1 - t0, time.perf_counter() - t1, len(questions))

    def evaluate(self, models: dict[str, Path], cache_keys: dict[str, str],
                 questions: list[int] | None = None) -> dict[str, list[bool]]:
        """Per-question correctness on the target language for each model, in question order (of
        ``questions`` only, when given)."""
        from hubswap.evaluate import run_evaluation
        from hubswap.hashing import cache_root

        results = run_evaluation(models, self.cfg, self.eval_dir, dataset=self.dataset, cache_keys=cache_keys,
                                 cache_dir=cache_root() / "eval", limit=self.limit or 0, questions=questions,
                                 progress=self.progress, session=self.session)
        return {name: results.verdicts[name][self.cfg.target_language] for name in models}
