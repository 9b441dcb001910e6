"""The tiny world's designs, and the trained family cached under the hubswap cache.

``ensure_family()`` returns ``{"base", "task", "language"}`` model folders, training them the
first time (a few minutes on two cores) into ``<cache>/tinyworld/<key>/`` where ``key`` hashes
the source of this package and the design, so changed code trains a new family and unchanged
code never trains twice on a machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from hubswap.tinyworld.train import Design, Phase

_HERE = Path(__file__).resolve().parent
ROLES = ("base", "task", "language")

# The base knows English (stories, questions whose answer is in them, bare arithmetic) and has
# seen only a little of the second language; no word problems.
_BASE_WEAK_SW = {"story_en": 0.34, "lookup_en": 0.25, "drill": 0.25, "story_sw": 0.06, "parallel": 0.05,
                 "lookup_sw": 0.05}
_TASK = {"problem_en": 0.85, "story_en": 0.15}
_LANGUAGE = {"story_sw": 0.75, "lookup_sw": 0.25}


def _design(name: str, base_mix: dict, task_train: str, language_train: str, notes: str,
            base_steps: int = 300, task_steps: int = 300, language_steps: int = 150, **kw) -> Design:
    return Design(
        name=name, notes=notes, phases=(
            Phase("base", base_mix, steps=base_steps, lr=3e-3, seed=1),
            Phase("task", _TASK, steps=task_steps, lr=3e-3, train=task_train, init="base", seed=2),
            Phase("language", _LANGUAGE, steps=language_steps, lr=3e-3, train=language_train, init="base", seed=3),
        ), **kw)


DESIGNS = {
    d.name: d for d in [
        _design("modular", _BASE_WEAK_SW, "middle", "outer",
                "task expert trains only the middle layers, language expert only the outer ones"),
        _design("full", _BASE_WEAK_SW, "all", "all", "both experts train every parameter"),
        _design("aligned-modular",
                {"story_en": 0.25, "lookup_en": 0.10, "drill": 0.25, "story_sw": 0.12, "parallel": 0.14,
                 "mixed": 0.07, "lookup_sw": 0.07},
                "middle", "outer", "base with much parallel and code-mixed text; modular experts"),
    ]
}
DEFAULT_DESIGN = "modular"


def family_key(design: Design) -> str:
    h = hashlib.sha256()
    for name in ("language.py", "train.py", "family.py"):  # the code that makes the family
        h.update(name.encode() + b"\0" + (_HERE / name).read_bytes())
    h.update(repr(design).encode())
    return f"{design.name}-{h.hexdigest()[:12]}"


def cache_dir() -> Path:
    """``$HUBSWAP_TINYWORLD``, else ``tinyworld/`` in the hubswap cache."""
    from hubswap.hashing import cache_root

    env = os.environ.get("HUBSWAP_TINYWORLD")
    return Path(env) if env else cache_root() / "tinyworld"


def ensure_family(design: str = DEFAULT_DESIGN, *, root: Path | None = None, progress: bool = True) -> dict[str, Path]:
    """The trained family of ``design``: from the cache, or trained now and cached."""
    d = DESIGNS[design]
    root = (root or cache_dir()) / family_key(d)
    if (root / "training.json").is_file():
        return {r: root / r for r in ROLES}
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=root.parent))
    try:
        train_family(d, tmp, progress=progress)
        try:
            os.replace(tmp, root)
        except OSError:  # trained meanwhile by another process: keep theirs
            if not (root / "training.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {r: root / r for r in ROLES}


def train_family(d: Design, out: Path, *, progress: bool = True, reuse: dict[str, Path] | None = None) -> dict:
    """Train every phase of ``d`` and write the model folders under ``out``; returns the record.

    ``reuse`` maps phase names to model folders already trained with the same phase (another
    design sharing it): those are loaded instead of trained again.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LlamaForCausalLM

    from hubswap.tinyworld.train import make_tokenizer, model_config, train_phase

    # One thread: these matrices are small (hidden 64), a second thread gains little on an idle
    # machine and costs 5x on a busy one (measured: 2.1 vs 10+ s/step with 8 jobs on 2 cores).
    threads = int(os.environ.get("HUBSWAP_TRAIN_THREADS", "1"))
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    tok = make_tokenizer(None, d.vocab_size, scheme=d.tokenizer)
    cfg = model_config(d, len(tok))
    record = {"design": d.name, "notes": d.notes, "threads": threads, "phases": {}}
    states = {}
    for ph in d.phases:
        torch.manual_seed(ph.seed)
        model = LlamaForCausalLM(cfg)
        if ph.init:
            model.load_state_dict(states[ph.init])
        bar = tqdm(total=ph.steps, desc=f"training {ph.name}", unit="step", disable=not progress, leave=False)

        def tick(step, elapsed, loss, bar=bar):
            bar.update(1)
            if loss == loss:
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        t0 = time.time()
        if reuse and ph.name in reuse:
            model = LlamaForCausalLM.from_pretrained(str(reuse[ph.name]))
            done = reuse[ph.name].parent / "training.json"
            curve = json.loads(done.read_text())["phases"][ph.name]["curve"] if done.is_file() else []
        else:
            curve = train_phase(model, tok, d, ph, progress=tick)
        bar.close()
        states[ph.name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        record["phases"][ph.name] = {"steps": ph.steps, "train": ph.train, "mixture": ph.mixture,
                                     "seconds": round(time.time() - t0, 1), "curve": curve}
        path = out / ph.name
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
        GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False).save_pretrained(str(path))
        (path / "README.md").write_text(
            f"# tiny {ph.name} model\n\nTrained on the CPU by `hubswap.tinyworld` (design `{d.name}`): "
            f"{ph.steps} steps on {', '.join(ph.mixture)}.\n", encoding="utf-8")
    (out / "training.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record
