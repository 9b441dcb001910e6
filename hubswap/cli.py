"""The ``hubswap`` command line.

Each subcommand is a function registered with ``@command``, its arguments defined just above it; the
parser is built from that list. Heavy libraries
(torch, transformers, vllm) are imported inside the functions that need them so ``--help``,
``validate`` and ``plan`` answer at once. A ``HubswapError`` becomes one line and a hint on stderr
and its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hubswap import __version__, interrupts
from hubswap.errors import EXIT_CODES, HubswapError

log = logging.getLogger("hubswap")

EPILOG = """\
examples:
  hubswap demo                                   constructed experts, the whole pipeline offline
  hubswap validate recipes/llama-swahili-math.toml
  hubswap plan recipes/llama-swahili-math.toml --layers 32
  hubswap build recipes/llama-swahili-math.toml  resolve, preflight, download, swap, evaluate, card
  hubswap build RECIPE --no-eval --no-push --output builds/x
  hubswap analyze RECIPE                         where each expert changed the base; a suggested swap
  hubswap sweep RECIPE --bottom 3..8 --top 1..4 --transition 0..2   build and rank a grid of swaps
  hubswap lock RECIPE                            pin Hub models to commits and file hashes (RECIPE.lock.json)
  hubswap push builds/x                          publish a build in one commit (HF_TOKEN with write access)
  hubswap verify org/x                           rebuild a published model from its pinned inputs; compare every file
  hubswap eval MODEL --dataset ../shared/mgsm --languages sw en --limit 20   MGSM on one model

exit codes (hubswap/errors.py):
""" + "".join(f"  {code:<4} {meaning}\n" for code, meaning in EXIT_CODES.items()) + """\
Set HUBSWAP_DEBUG=1 to see tracebacks.
"""


@dataclass(frozen=True)
class Command:
    """One subcommand: its arguments and what it runs, defined side by side below."""

    name: str
    help: str
    description: str | None
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = []


def command(name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None],
            description: str | None = None):
    """Register the decorated ``run(args) -> exit code`` as ``hubswap <name>``."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS.append(Command(name, help, description, arguments, run))
        return run

    return register


def _recipe(s: argparse.ArgumentParser) -> None:
    s.add_argument("recipe", metavar="RECIPE")


def _build_dir(s: argparse.ArgumentParser) -> None:
    s.add_argument("build", metavar="BUILD_DIR", help="a build folder, or its model/ folder")


# -- validate --------------------------------------------------------------------------------


def _validate_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("recipes", nargs="+", metavar="RECIPE")


@command("validate", help="check recipes against the schema (nothing is downloaded)", arguments=_validate_arguments)
def _validate(args: argparse.Namespace) -> int:
    from hubswap.recipe import load_recipe

    for path in args.recipes:
        loaded = load_recipe(path)
        r = loaded.recipe
        if r.models.task.is_local:  # a local task expert's layer count is one small read away
            from hubswap.errors import ModelFilesError
            from hubswap.layermap import LayerStackError, text_layer_count
            from hubswap.plan import task_config

            try:
                num_layers = text_layer_count(task_config(loaded))[0]
            except (ModelFilesError, LayerStackError):
                num_layers = None  # build and plan say what is wrong with the model
            if num_layers is not None:
                loaded.check_layers(num_layers)
        print(f"{path}: ok ({r.name}: task {r.models.task.display()}, language {r.models.language.display()})")
    return 0


# -- plan ------------------------------------------------------------------------------------


def _plan_arguments(s: argparse.ArgumentParser) -> None:
    _recipe(s)
    s.add_argument("--layers", type=int, metavar="L",
                   help="number of layers (default: read config.json of the task expert)")


@command("plan", help="print the layer map of a recipe without reading weights", arguments=_plan_arguments)
def _plan(args: argparse.Namespace) -> int:
    from hubswap.plan import plan_command

    print(plan_command(args.recipe, num_layers=args.layers))
    return 0


def _questions(text: str) -> int:
    from hubswap.evaluate.command import question_count

    return question_count(text)


def _gpus(s: argparse.ArgumentParser) -> None:
    from hubswap.evaluate.command import gpus_argument

    gpus_argument(s)


# -- build -----------------------------------------------------------------------------------


def _build_arguments(s: argparse.ArgumentParser) -> None:
    _recipe(s)
    s.add_argument("-o", "--output", metavar="DIR", help="build folder (default: builds/<recipe name>)")
    s.add_argument("--no-eval", action="store_true", help="skip the MGSM evaluation and the gate")
    s.add_argument("--push", action="store_true", help="publish to [publish].repo if the gate passes")
    s.add_argument("--no-push", action="store_true", help="never publish (the default)")
    s.add_argument("--force", action="store_true", help="publish over a repo built from other inputs")
    s.add_argument("--limit", type=_questions, metavar="N", help="evaluate only the first N questions per language")
    s.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                   help="largest output shard, e.g. 5GB (default) or 500MB")
    s.add_argument("--no-clone", action="store_true",
                   help="copy every tensor, never share the experts' blocks (as [swap] clone = false)")
    _gpus(s)


@command("build", help="resolve, preflight, download, swap, evaluate and card (and publish with --push)",
         description="Build the merged model of RECIPE into a build folder (default builds/<name>): "
         "model/ holds exactly what is published, eval/ the per-question generations.",
         arguments=_build_arguments)
def _build(args: argparse.Namespace) -> int:
    from hubswap.pipeline import BuildOptions, build

    opts = BuildOptions(
        output=Path(args.output) if args.output else None,
        evaluate=not args.no_eval,
        push=args.push and not args.no_push,
        force=args.force,
        limit=args.limit,
        max_shard_size=args.max_shard_size,
        clone=not args.no_clone,
        gpus=args.gpus,
    )
    result = build(args.recipe, opts)
    print(result.summary())
    return 0


# -- lock ------------------------------------------------------------------------------------


@command("lock", help="pin the recipe's Hub models to commit SHAs and file hashes (RECIPE.lock.json)",
         description="Resolve every model of RECIPE (branch or tag -> commit SHA) and record the sha256 "
         "and size of every file a build uses in <recipe stem>.lock.json beside the recipe. Builds use "
         "the lock when present and refuse one that no longer matches the recipe. Only configs, "
         "tokenizer files and the safetensors index are downloaded; weights' hashes come from the Hub.",
         arguments=_recipe)
def _lock(args: argparse.Namespace) -> int:
    from hubswap.hub.lock import write_recipe_lock

    path, lock = write_recipe_lock(args.recipe)
    print(f"wrote {path}")
    for role, m in lock.models.items():
        size = sum(f.size for f in m.files.values())
        where = m.path if m.repo is None else f"{m.repo}@{m.revision} -> {(m.commit or '')[:12]}"
        print(f"  {role:<9} {where}  ({len(m.files)} files, {size / 1e6:.1f} MB)")
    return 0


# -- push ------------------------------------------------------------------------------------


def _push_arguments(s: argparse.ArgumentParser) -> None:
    _build_dir(s)
    s.add_argument("--repo", metavar="ORG/NAME", help="publish here instead of [publish].repo")
    s.add_argument("--force", action="store_true",
                   help="publish anyway: over another build or files not made by hubswap, "
                   "or a build that failed its gate")


@command("push", help="publish a build's model folder to the Hub in one commit",
         description="Upload BUILD_DIR/model (weights, card, recipe, lock, eval results) to the recipe's "
         "[publish].repo in ONE commit, creating the repo (private as the recipe says). Pushing the "
         "same build again does nothing; a repo holding another recipe's build, a build from other "
         "inputs or files not made by hubswap is left alone unless --force. Needs a write token "
         "(HF_TOKEN or `hf auth login`).",
         arguments=_push_arguments)
def _push(args: argparse.Namespace) -> int:
    from hubswap.hub.publish import publish

    print(f"published {publish(args.build, repo=args.repo, force=args.force)}")
    return 0


# -- verify ----------------------------------------------------------------------------------


def _verify_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("target", metavar="REPO[@REV]",
                   help="a model that `hubswap push` published, e.g. org/llama-3.1-8b-swahili-math or org/x@v1")
    s.add_argument("-o", "--output", metavar="DIR", help="keep the rebuild in DIR (default: a temporary folder, removed)")


@command("verify", help="rebuild a published model from the commits it pinned and compare every file's sha256",
         description="Check that a published hubswap model is what its recipe makes. Downloads the repo's "
         "hubswap/ folder at REV (default main): the recipe, the build record (lock.json) and the recipe's "
         "lock (recipe.lock.json), which pins every input to the commit and file hashes the build read. "
         "Rebuilds the model from exactly those commits, whatever the experts' branches say now "
         "(`hubswap build hubswap/recipe.toml --no-eval`: weights are downloaded, nothing is evaluated), "
         "then compares the sha256 of every output file (shards, index, configs, tokenizer, licence files) "
         "with the published file's. Prints one line per file: ok, DIFFERS, MISSING (listed by the record, "
         "not published) or NOT REBUILT. Exit 0 when every file matches, 10 when one does not or when the "
         "model cannot be rebuilt from the Hub (an input that was a local folder, no recipe.lock.json). "
         "Gated inputs need HF_TOKEN with access to them. Example: `hubswap verify "
         "your-org/llama-3.1-8b-swahili-math-layerswap@v1 -o /tmp/rebuild` (docs/hub.md).",
         arguments=_verify_arguments)
def _verify(args: argparse.Namespace) -> int:
    from hubswap.errors import VerifyFailedError
    from hubswap.verify import verify

    result = verify(args.target, output=Path(args.output) if args.output else None)
    print(result.report())
    if not result.ok:
        bad = [f.name for f in result.files if f.status != "ok"]
        raise VerifyFailedError(f"{result.repo}@{result.commit[:12]}: {', '.join(bad[:5])}"
                                f"{' ...' if len(bad) > 5 else ''} do(es) not match the rebuild",
                                hint="the published files are not what its recipe and pinned inputs make")
    return 0


# -- analyze ---------------------------------------------------------------------------------


def _analyze_arguments(s: argparse.ArgumentParser) -> None:
    _recipe(s)
    s.add_argument("-o", "--output", metavar="DIR", help="analysis folder (default: analysis/<recipe name>)")


@command("analyze", help="measure where each expert changed the base, per layer, and suggest a swap",
         description="Stream the base and both experts tensor by tensor and measure the relative change "
         "||expert - base|| / ||base|| per layer, per module kind (attention, MLP, norms) and per "
         "non-layer tensor. Writes changes.csv, changes.json and changes.svg and prints a suggested "
         "bottom/top/transition with the reasoning.",
         arguments=_analyze_arguments)
def _analyze(args: argparse.Namespace) -> int:
    from hubswap.analysis import analyze

    print(analyze(args.recipe, args.output).report())
    return 0


# -- sweep -----------------------------------------------------------------------------------


def _sweep_arguments(s: argparse.ArgumentParser) -> None:
    _recipe(s)
    s.add_argument("--bottom", required=True, metavar="A..B", help="bottom sizes, e.g. 3..8 or 2,4,6")
    s.add_argument("--top", required=True, metavar="A..B", help="top sizes, e.g. 1..4")
    s.add_argument("--transition", default="0", metavar="A..B", help="transition sizes, e.g. 0..2 (default 0)")
    s.add_argument("--limit", type=_questions, metavar="N",
                   help="evaluate only the first N questions (default: [eval].limit)")
    s.add_argument("--keep", action="store_true", help="keep each merged model (default: removed after evaluation)")
    s.add_argument("-o", "--output", metavar="DIR", help="sweep folder (default: sweeps/<recipe name>)")
    s.add_argument("--recipe-out", metavar="FILE",
                   help="where to write the winning recipe (default: <RECIPE stem>.sweep.toml beside it)")
    s.add_argument("--no-holdout", action="store_true",
                   help="select and report on all questions (the reported score is then optimistic)")
    s.add_argument("--max-shard-size", default="5GB", metavar="SIZE", help="largest scratch shard (default 5GB)")
    s.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run each configuration as a task on a Ray cluster (ADDRESS, e.g. auto or ray://head:10001; "
                   "without: the cluster started on this machine, or a new local one); needs hubswap[ray]")
    _gpus(s)


@command("sweep", help="build and evaluate a grid of swap configurations; rank them with paired statistics",
         description="Merge every (bottom, top, transition) of the grid into a scratch folder, evaluate it "
         "on the recipe's target language with the recipe's [eval] settings, and rank the configurations "
         "against the best one and both experts, paired on the same questions. The choice is made on a "
         "fixed half of the questions and the winner is scored on the other half. Writes sweep.csv, "
         "sweep.json and sweep.svg, and the winning configuration as a new recipe beside RECIPE.",
         arguments=_sweep_arguments)
def _sweep(args: argparse.Namespace) -> int:
    from hubswap.sweeps import parse_range, sweep

    result = sweep(
        args.recipe,
        bottoms=parse_range(args.bottom, "--bottom"),
        tops=parse_range(args.top, "--top"),
        transitions=parse_range(args.transition, "--transition"),
        limit=args.limit, keep=args.keep, output=args.output, holdout=not args.no_holdout,
        recipe_out=args.recipe_out, max_shard_size=args.max_shard_size, gpus=args.gpus, ray=args.ray,
    )
    print(result.summary())
    return 0


# -- demo ------------------------------------------------------------------------------------


def _demo_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("-o", "--output", default="demo", metavar="DIR", help="where to write (default: demo/)")
    s.add_argument("--limit", type=_questions, default=0, metavar="N",
                   help="questions per language (default: all 100 of the demo world's MGSM)")
    s.add_argument("--no-eval", action="store_true", help="skip the evaluation")


@command("demo", help="build the demo world (experts constructed by hand) and run the whole pipeline offline on the CPU",
         arguments=_demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from hubswap.demo import run_demo
    from hubswap.files import check_writable

    check_writable(args.output)  # before the experts are made
    return run_demo(Path(args.output), limit=args.limit, evaluate=not args.no_eval)


# -- card ------------------------------------------------------------------------------------


def _card_arguments(s: argparse.ArgumentParser) -> None:
    _build_dir(s)
    s.add_argument("--summary", action="store_true",
                   help="print only the comparison table and gate verdict (Markdown), write nothing")


@command("card", help="re-render the model card (README.md and layer-map picture) of a build",
         description="Render README.md and hubswap/layer_map.svg of a build's model folder from its "
         "records (hubswap/recipe.toml, lock.json and eval_results.json). Nothing is downloaded.",
         arguments=_card_arguments)
def _card(args: argparse.Namespace) -> int:
    from hubswap.card import evaluation_summary, write_card

    if args.summary:
        print(evaluation_summary(args.build), end="")
        return 0
    print(write_card(args.build))
    return 0


# -- eval (its arguments live beside it, in hubswap.evaluate.command) --------------------------


def _eval_arguments(s: argparse.ArgumentParser) -> None:
    from hubswap.evaluate.command import add_arguments

    add_arguments(s)


@command("eval", help="evaluate a model (and models to compare it with) on MGSM",
         description="Run MGSM on MODEL_DIR_OR_REPO with lm-eval 0.4.13 compatible prompts (native-cot, "
         "en-cot, direct) or a chat prompt, greedy, on the vLLM engine or transformers. Prints per "
         "language n, accuracy with a 95% interval, lm-eval strict-match and flexible-extract, the "
         "truncation and no-answer rates, and the paired difference with each --compare model. Writes "
         "eval_results.json and one jsonl per model and language to --output.",
         arguments=_eval_arguments)
def _eval(args: argparse.Namespace) -> int:
    from hubswap.evaluate.command import eval_command

    return eval_command(args)


# -- the parser and the entry point ------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubswap",
        description="Build merged LLMs by layer swapping (Bandarkar et al., ICLR 2025) from TOML "
        "recipes: resolve and pin Hub repos, check compatibility, stream the swap, validate on "
        "MGSM with vLLM, publish with a model card.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hubswap {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        s = sub.add_parser(c.name, help=c.help, description=c.description)
        c.arguments(s)
        s.set_defaults(func=c.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (errors.EXIT_CODES). A Ctrl-C at any point, from building
    the parser on, ends in one line and 130, whatever exception it became on its way up
    (hubswap/interrupts.py)."""
    try:
        with interrupts.command():
            code = _run_command(argv)
            interrupts.check()  # a Ctrl-C that some code swallowed and nothing checked since
            return code
    except KeyboardInterrupt:
        pass
    except Exception:
        if not interrupts.requested():
            raise
    print("interrupted", file=sys.stderr)
    return 130


def _run_command(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    if not args.verbose:  # one line per HTTP request drowns the progress bars
        for name in ("httpx", "httpx2"):  # huggingface_hub 1.x / 2.x
            logging.getLogger(name).setLevel(logging.WARNING)
        # vLLM logs every engine step at INFO and CPU tuning advice as warnings; -v shows them.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        return args.func(args) or 0
    except HubswapError as e:
        if os.environ.get("HUBSWAP_DEBUG") or interrupts.requested():  # after a Ctrl-C: "interrupted"
            raise
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # A write the filesystem refused where no stage said so itself (each checks its output
        # folder first): still one line naming the folder, never a traceback.
        from hubswap.files import NOT_WRITABLE, not_writable

        if e.errno not in NOT_WRITABLE or os.environ.get("HUBSWAP_DEBUG") or interrupts.requested():
            raise
        err = not_writable(e)
        print(f"error: {err}\nhint: {err.hint}", file=sys.stderr)
        return err.exit_code


def run() -> None:
    """The ``hubswap`` command (console script and ``python -m hubswap.cli``): ``main``, then exit.

    Once ``main`` has returned, the work is over (or already stopped by Ctrl-C and said so): a
    SIGINT during the interpreter's shutdown (the worker server being stopped, threads joined)
    must not turn the exit status into a death by signal with no line said. Not in ``main``
    itself, which tests call in their own process: an ignored SIGINT is inherited by children.

    CPython also kills itself with SIGINT at exit under ``python -m`` once a KeyboardInterrupt
    has left any code run from a string (``exec``/``eval`` of source: dataclasses, namedtuple and
    pydantic build classes so while a lazy import runs), even one ``main`` then caught: Modules/
    main.c checks a flag that ``run_eval_code_obj`` sets then (bpo-41602's check) and clears at the
    start of every string eval. Seen: "interrupted", then -SIGINT, about one Ctrl-C in ten during
    a loaded machine's build. One empty string eval clears it; 130 stays 130."""
    import signal

    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    eval("None")  # clears CPython's "KeyboardInterrupt unhandled" flag (above)
    sys.exit(code)


if __name__ == "__main__":
    run()
