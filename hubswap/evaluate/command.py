"""``hubswap eval``: MGSM on one model (and any models to compare it with), outside a build."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from hubswap.errors import EvaluationError, HubswapError, ModelFilesError

log = logging.getLogger(__name__)

def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvaluationError(f"{what} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


# A model's name names its files in the output folder (NAME.LANG.jsonl): letters, digits, and . _ -
# inside, so that no name can reach out of the folder or hide as a dot file.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def check_model_name(name: str, flag: str) -> None:
    if not _NAME.fullmatch(name):
        raise EvaluationError(f"{flag} {name!r}: a model's name names its result files, so it must be letters, "
                              "digits and . _ - (not first or last)",
                              hint="for example --name merged, --compare task=PATH")


def question_count(text: str) -> int:
    """``--limit`` (eval, build, sweep, demo): how many questions per language, 0 for all of them.
    An argparse type, so ``--limit -3`` is a usage error as ``--limit x`` is (exit 2)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of questions (0 or more; 0 means all), not {text!r}")
    return n


def resolve_model(spec: str, revision: str | None = None, *, endpoint: str | None = None) -> Path:
    """A local model folder as is, or a Hub repo resolved to a commit and downloaded the way a
    build downloads its inputs (safetensors, configs, tokenizer; every file checked against its
    sha256)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelFilesError(f"{p} is not a model folder (no config.json)",
                                  hint="give a model folder (config.json and *.safetensors) or a Hub repo id")
        return p.resolve()
    if p.is_absolute() or spec.startswith((".", "~")):
        raise EvaluationError(f"model folder {p} does not exist")
    from hubswap.hub.download import download_model
    from hubswap.hub.resolve import resolve_model as resolve_hub_model
    from hubswap.recipe import ModelSource

    try:
        source = ModelSource(repo=spec, revision=revision)
    except ValueError as e:
        raise EvaluationError(f"{spec!r} is neither a model folder nor a Hub repo id: {e}") from None
    return download_model(resolve_hub_model("model", source, endpoint=endpoint))


# Errors name the recipe's settings; ``hubswap eval`` has no recipe: its hints name its flags.
FLAGS = [
    (re.compile(r"\[eval\.vllm\] max_model_len \(now (\d+)\)"), r"--vllm max_model_len=N (now \1)"),
    (re.compile(r"\[eval\.vllm\] ((?:max_model_len|gpu_memory_utilization|tensor_parallel_size)"
                r"(?: / (?:max_model_len|gpu_memory_utilization|tensor_parallel_size))*)"),
     lambda m: " / ".join(f"--vllm {k}=..." for k in m.group(1).split(" / "))),
    (re.compile(r"\[eval\.vllm\]( in the recipe)?"), "the --vllm options"),
    (re.compile(r"\[eval\]\.?\s?(dataset|num_fewshot|batch_size|max_new_tokens|limit|dtype|backend)"),
     lambda m: "--" + m.group(1).replace("_", "-")),
    (re.compile(r"set --backend = \"(\w+)\"( \(hubswap eval --backend \w+\))?"), r"pass --backend \1"),
]


def as_flags(text: str | None) -> str | None:
    """A hint written for a recipe, in ``hubswap eval``'s flags."""
    if text is None:
        return None
    for pattern, replacement in FLAGS:
        text = pattern.sub(replacement, text)
    return text


def eval_command(args: argparse.Namespace) -> int:
    try:
        return _eval_command(args)
    except HubswapError as e:
        e.hint = as_flags(e.hint)
        raise


def _eval_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from hubswap.evaluate import format_table, run_evaluation
    from hubswap.recipe import EvalConfig

    vllm_options = {k: _parse_value(v) for k, v in _pairs(args.vllm, "--vllm").items()}
    try:
        cfg = EvalConfig(
            dataset=args.dataset, dataset_revision=args.dataset_revision, languages=args.languages,
            prompt=args.prompt, num_fewshot=args.num_fewshot, max_new_tokens=args.max_new_tokens,
            compare=[], backend=args.backend, limit=args.limit, seed=args.seed, batch_size=args.batch_size,
            vllm=vllm_options, dtype=args.dtype, gpus=args.gpus,
        )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
                             for err in e.errors(include_url=False))
        raise EvaluationError(f"bad evaluation settings: {problems}") from None
    from hubswap.durable import disk_full_is_an_error
    from hubswap.evaluate.backends import require_libraries
    from hubswap.files import check_writable

    out = Path(args.output)
    compare = _pairs(args.compare, "--compare")
    for name, flag in ((args.name, "--name"), *((n, "--compare") for n in compare)):
        check_model_name(name, flag)
    check_writable(out)
    require_libraries(cfg.backend)  # before resolving (downloading) anything
    models = {args.name: resolve_model(args.model, args.revision)}
    for name, spec in compare.items():
        if name in models:
            raise EvaluationError(f"--compare name {name!r} is used twice")
        models[name] = resolve_model(spec)
    from hubswap.preflight import LocalModelFiles, check_config_matches_weights

    out = Path(args.output)

    for path in models.values():  # before any engine starts: seconds, and a traceback, later
        check_config_matches_weights(LocalModelFiles("evaluated", path, display=str(path)))
    created = not out.exists()
    try:
        with disk_full_is_an_error(out, "the evaluation records"):
            results = run_evaluation(models, cfg, out, dataset=args.dataset, limit=args.limit,
                                     progress=not args.no_progress)
            results.write(out / "eval_results.json")
            from hubswap.evaluate.lm_eval_files import FOLDER, write_lm_eval_files

            lm_eval = write_lm_eval_files(results, out, out / FOLDER)
    except BaseException:
        if created:  # a failed evaluation leaves no empty folder behind (what it wrote, it keeps)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    print(format_table(results))
    print(f"results: {out / 'eval_results.json'}; per-question records: {out}/<model>.<lang>.jsonl"
          + (f"; lm-eval's files: {out / FOLDER}/<model>/" if lm_eval else ""))
    return 0


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("model", metavar="MODEL_DIR_OR_REPO", help="a model folder or a Hub repo id")
    s.add_argument("--revision", help="revision of a Hub model (default main)")
    s.add_argument("--name", default="model", help="the model's name in the results (default: model)")
    s.add_argument("--compare", action="append", metavar="NAME=MODEL",
                   help="also evaluate MODEL on the same questions and compare (repeatable)")
    s.add_argument("--dataset", default="juletxara/mgsm", metavar="ID_OR_DIR",
                   help="MGSM as a Hub dataset id or a local folder of its layout (default juletxara/mgsm)")
    s.add_argument("--dataset-revision", default="main", metavar="REV")
    s.add_argument("--languages", nargs="+", default=["en"], metavar="LANG",
                   help="MGSM languages, the first one the target (default: en)")
    s.add_argument("--prompt", default="native-cot", choices=["native-cot", "en-cot", "direct", "chat"])
    s.add_argument("--num-fewshot", type=int, default=8, metavar="K")
    s.add_argument("--max-new-tokens", type=int, default=512, metavar="N")
    s.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    s.add_argument("--limit", type=question_count, default=0, metavar="N",
                   help="first N questions per language (0: all 250)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"],
                   help="evaluate every model in this dtype (default: the first model's; auto: each its own)")
    s.add_argument("--batch-size", type=int, default=16, metavar="B", help="transformers backend batch size")
    s.add_argument("--vllm", action="append", metavar="KEY=VALUE",
                   help="an argument for vllm.LLM, e.g. --vllm tensor_parallel_size=2 (repeatable; JSON values)")
    s.add_argument("-o", "--output", default="eval", metavar="DIR",
                   help="where to write eval_results.json and the per-question jsonl (default: eval/)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    gpus_argument(s)


def gpus_argument(s: argparse.ArgumentParser) -> None:
    """``--gpus`` (build, eval, sweep): overrides ``[eval] gpus``."""
    from hubswap.evaluate.parallel import parse_gpus

    s.add_argument("--gpus", type=parse_gpus, metavar="N|auto",
                   help="devices the evaluation may use: N // tensor_parallel_size engines at once, each on its own "
                   "(auto: every visible GPU; without a GPU, N CPU engines at once)")
