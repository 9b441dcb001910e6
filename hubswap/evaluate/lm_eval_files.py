"""lm-evaluation-harness's own files for hubswap's evaluation, beside ``eval_results.json``.

Per evaluated model, ``<out>/<model>/`` holds what ``lm_eval --log_samples --output_path`` writes
(0.4.x schema, checked against lm-eval 0.4.13 itself in ``tests/test_lm_eval_files.py``):

* ``results_<date>.json``: per task (``mgsm_native_cot_sw``, ``mgsm_en_cot_sw``, ``mgsm_direct_sw``)
  ``exact_match,<filter>`` and ``exact_match_stderr,<filter>`` (the sample standard error of the
  mean, as lm-eval's ``mean_stderr``) for its two filters (``strict-match`` and
  ``flexible-extract``; ``remove_whitespace`` and ``flexible-extract`` in direct mode), ``configs``
  (the task as lm-eval configures it, with the generation kwargs used), ``versions``, ``n-shot``,
  ``n-samples``, ``config`` (model, revision, dtype, seeds) and ``task_hashes``; ``evaluator``
  says that hubswap, not lm-eval, wrote them;
* ``samples_<task>_<date>.jsonl``: one row per filter and question in lm-eval's ``--log_samples``
  shape (``doc``, ``arguments``, ``resps``, ``filtered_resps``, ``exact_match``) with its
  ``doc_hash``, ``prompt_hash`` and ``target_hash``, computed as lm-eval computes them.

These are the same generations and verdicts as hubswap's per-question records (``<model>.<lang>.jsonl``,
read back here), so any tool that reads lm-eval output can check them. The ``chat`` mode has no
lm-eval task: nothing is written for it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from hubswap.evaluate.data import TEST_QUESTIONS
from hubswap.evaluate.languages import (
    END_MARKERS,
    ENGLISH_STRICT_REGEX,
    FLEXIBLE_REGEX,
    Language,
    get_language,
)
from hubswap.evaluate.prompts import FEWSHOT_SEED, answer_cue
from hubswap.evaluate.results import EvalResults
from hubswap.files import atomic_write, write_json

log = logging.getLogger(__name__)

LM_EVAL_VERSION = "0.4.13"
FOLDER = "lm-eval"
_TASKS = {"native-cot": ("mgsm_native_cot", 4.0), "en-cot": ("mgsm_en_cot", 3.0), "direct": ("mgsm_direct", 4.0)}
_METRIC = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
           "ignore_punctuation": True}
_BACKEND_MODEL = {"vllm": "vllm", "transformers": "hf"}  # lm-eval's name for the same engine


def task_name(mode: str, lang: str) -> str | None:
    """lm-eval's task for a prompt mode and language; None for ``chat`` (no lm-eval task)."""
    prefix = _TASKS.get(mode)
    return f"{prefix[0]}_{lang}" if prefix else None


def hash_string(text: str) -> str:
    """lm-eval's ``utils.hash_string``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def doc_hash(doc: dict) -> str:
    """lm-eval's ``doc_hash``: the document as ``json.dumps(indent=2, ensure_ascii=False)``."""
    return hash_string(json.dumps(doc, indent=2, default=str, ensure_ascii=False))


def mean_stderr(values: list[float]) -> float | str:
    """lm-eval's ``mean_stderr`` (sample standard deviation over sqrt(n)); "N/A" for one value, as
    lm-eval reports it."""
    if len(values) < 2:
        return "N/A"
    mu = sum(values) / len(values)
    return math.sqrt(sum([(x - mu) ** 2 for x in values]) / (len(values) - 1)) / math.sqrt(len(values))


def _filters(mode: str, lang: Language) -> list[tuple[str, dict, str, str]]:
    """``(name, lm-eval filter config, record field of the filtered answer, of the verdict)``."""
    flexible = ("flexible-extract", {"filter": [
        {"function": "regex", "group_select": -1, "regex_pattern": FLEXIBLE_REGEX}, {"function": "take_first"}],
        "name": "flexible-extract"}, "flexible_answer", "flexible_extract")
    if mode == "direct":
        first = ("remove_whitespace", {"name": "remove_whitespace", "filter": [
            {"function": "remove_whitespace"}, {"function": "take_first"}]}, "strict_answer", "strict_match")
    else:
        pattern = ENGLISH_STRICT_REGEX if mode == "en-cot" else lang.strict_regex
        first = ("strict-match", {"filter": [{"function": "regex", "regex_pattern": pattern},
                                             {"function": "take_first"}], "name": "strict-match"},
                 "strict_answer", "strict_match")
    return [first, flexible]


def task_config(mode: str, lang_code: str, *, num_fewshot: int, max_new_tokens: int, dataset: str) -> dict:
    """The task's ``configs`` entry as lm-eval 0.4.13 writes it for its MGSM task YAMLs."""
    lang = get_language(lang_code)
    cue = answer_cue(lang, mode)
    text = (f'{{% if answer is not none %}}{{{{question+"\\n{cue}"}}}}{{% else %}}'
            f'{{{{"{lang.question} "+question+"\\n{cue}"}}}}{{% endif %}}')
    target = ("{{answer_number|string}}" if mode == "direct" else
              f"{{% if answer is not none %}}{{{{answer[{lang.exemplar_skip}:]}}}}{{% else %}}"
              "{{answer_number|string}}{% endif %}")
    delimiter = "" if mode == "direct" else " "
    return {
        "task": task_name(mode, lang_code), "dataset_path": dataset, "dataset_name": lang_code,
        "training_split": "train", "test_split": "test", "doc_to_text": text, "doc_to_target": target,
        "unsafe_code": False, "description": "", "target_delimiter": delimiter, "fewshot_delimiter": "\n\n",
        "fewshot_config": {
            "sampler": "default", "split": None, "process_docs": None, "fewshot_indices": None, "samples": None,
            "doc_to_text": text, "doc_to_choice": None, "doc_to_target": target, "gen_prefix": None,
            "fewshot_delimiter": "\n\n", "target_delimiter": delimiter,
        },
        "num_fewshot": num_fewshot, "metric_list": [dict(_METRIC)], "output_type": "generate_until",
        "generation_kwargs": generation_kwargs(lang, max_new_tokens), "repeats": 1,
        "filter_list": [f[1] for f in _filters(mode, lang)], "should_decontaminate": False,
        "metadata": {"version": _TASKS[mode][1]},
    }


def generation_kwargs(lang: Language, max_new_tokens: int) -> dict:
    """The task's generation kwargs as lm-eval logs them with ``--gen_kwargs max_gen_toks=N``."""
    return {"do_sample": False, "until": [lang.question, *END_MARKERS], "max_gen_toks": max_new_tokens}


def sample_rows(mode: str, lang_code: str, records: list[dict], *, max_new_tokens: int) -> list[dict]:
    """lm-eval's ``--log_samples`` rows of one task from hubswap's per-question records: per filter,
    per question, in that order (as lm-eval logs them)."""
    lang = get_language(lang_code)
    kwargs = generation_kwargs(lang, max_new_tokens)
    rows = []
    for name, _, answer_field, verdict_field in _filters(mode, lang):
        for r in records:
            target = str(r["gold"])
            rows.append({
                "doc_id": r["index"], "doc": r["doc"], "target": target,
                "arguments": {"gen_args_0": {"arg_0": r["prompt"], "arg_1": kwargs}},
                "resps": [[r["generation"]]], "filtered_resps": [r[answer_field]], "filter": name,
                "metrics": ["exact_match"], "doc_hash": doc_hash(r["doc"]), "prompt_hash": hash_string(r["prompt"]),
                "target_hash": hash_string(target), "exact_match": 1.0 if r[verdict_field] else 0.0,
            })
    return rows


def task_hash(rows: list[dict]) -> str:
    """lm-eval's ``task_hashes`` entry: the hash of every row's three hashes, in order."""
    return hash_string("".join(r["doc_hash"] + r["prompt_hash"] + r["target_hash"] for r in rows))


def task_results(task: str, mode: str, lang_code: str, rows: list[dict]) -> dict:
    out: dict[str, Any] = {"name": task, "alias": task, "sample_len": 0}
    for name, *_ in _filters(mode, get_language(lang_code)):
        values = [r["exact_match"] for r in rows if r["filter"] == name]
        out["sample_len"] = len(values)
        out[f"exact_match,{name}"] = sum(values) / len(values) if values else "N/A"
        out[f"exact_match_stderr,{name}"] = mean_stderr(values)
    return out


def _model_ref(source: str) -> tuple[str, str | None]:
    """``(model, commit)`` from a results ``source`` (``org/name@<commit>``, a path, "this model")."""
    m = re.fullmatch(r"(.+)@([0-9a-f]{40})", source)
    return (m.group(1), m.group(2)) if m else (source, None)


def write_lm_eval_files(results: EvalResults, records_dir: Path, out: Path) -> list[Path]:
    """Write lm-eval's files for every model of ``results`` into ``out/<model>/`` (each folder
    replaced whole), from the per-question records in ``records_dir``. Returns the folders written."""
    st = results.settings
    if task_name(st.prompt, "en") is None:
        log.info("no lm-eval files: lm-evaluation-harness has no MGSM task for the %s prompt", st.prompt)
        return []
    date = _dt.datetime.now(_dt.UTC)
    stamp = date.replace(tzinfo=None).isoformat().replace(":", "-")
    written = []
    for name, model in results.models.items():
        folder = out / name
        staging = out / f".{name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        doc: dict[str, Any] = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
                               "higher_is_better": {}, "n-samples": {}}
        hashes = {}
        for lang in st.languages:
            task = task_name(st.prompt, lang)
            records = [json.loads(line) for line in
                       (records_dir / f"{name}.{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
            rows = sample_rows(st.prompt, lang, records, max_new_tokens=st.max_new_tokens)
            atomic_write(staging / f"samples_{task}_{stamp}.jsonl",
                         "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            doc["results"][task] = task_results(task, st.prompt, lang, rows)
            doc["configs"][task] = task_config(st.prompt, lang, num_fewshot=st.num_fewshot,
                                               max_new_tokens=st.max_new_tokens, dataset=st.dataset)
            doc["versions"][task] = _TASKS[st.prompt][1]
            doc["n-shot"][task] = st.num_fewshot
            doc["higher_is_better"][task] = {"exact_match": True}
            doc["n-samples"][task] = {"original": TEST_QUESTIONS, "effective": len(records)}
            hashes[task] = task_hash(rows)
        pretrained, commit = _model_ref(model.source)
        dtype = (model.engine or {}).get("dtype") or st.dtype
        doc["config"] = {
            "model": _BACKEND_MODEL.get(st.backend, st.backend),
            "model_args": {"pretrained": pretrained, **({"revision": commit} if commit else {}), "dtype": dtype},
            "model_dtype": dtype, "model_revision": commit or "main", "model_sha": commit or "",
            "batch_size": str(st.batch_size) if st.batch_size else "auto", "device": results.hardware.device,
            "limit": st.limit or None, "gen_kwargs": {"max_gen_toks": st.max_new_tokens},
            "random_seed": st.seed, "fewshot_seed": FEWSHOT_SEED,
        }
        doc.update({
            "evaluator": "hubswap",
            "evaluator_note": (f"written by hubswap {results.versions.get('hubswap')} from its own generations "
                               f"and verdicts, in the schema of lm-evaluation-harness {LM_EVAL_VERSION}; "
                               "not a run of lm-eval"),
            "hubswap_version": results.versions.get("hubswap"),
            "lm_eval_schema_version": LM_EVAL_VERSION,
            "date": date.timestamp(),
            "transformers_version": results.versions.get("transformers"),
            "task_hashes": hashes,
            "model_source": doc["config"]["model"],
            "model_name": pretrained,
            "model_name_sanitized": re.sub(r"[\"<>:/|\\?*\[\]]+", "__", pretrained),
            "fewshot_as_multiturn": None, "chat_template": None, "chat_template_sha": None,
        })
        write_json(staging / f"results_{stamp}.json", doc)
        _replace(staging, folder)
        written.append(folder)
    return written


def _replace(new: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dest, old)
    os.rename(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

