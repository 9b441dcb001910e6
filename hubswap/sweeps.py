"""hubswap sweep: build and score a grid of swap configurations, without choosing on the test set.

    hubswap sweep RECIPE --bottom 3..8 --top 1..4 --transition 0..2 [--limit N] [--keep]

The experts are downloaded once (the build's own steps). Each configuration is merged by the
streaming swap into a scratch folder, evaluated on the recipe's target language with the
recipe's evaluation settings, and removed unless ``--keep``. The experts are evaluated once on
all the questions.

Choosing the best of many configurations on a set of questions and reporting its score on those
same questions overstates it (the winner is partly the luckiest). So the questions are split once
into two fixed halves (a seeded shuffle of the question indices): every configuration is scored
on the *selection* half only, and the winner chosen there; then the winner alone is scored on
the other, *held-out* half, with its paired comparisons against both experts. A grid of N
configurations thus generates N/2 + 1/2 sets of answers, not N. The summary prints what each
configuration cost (merge and evaluation). This module is the grid, the ranking, the result and
its files; ``sweep_eval.py`` merges and evaluates.

Outputs, in the sweep folder: ``sweep.csv`` and ``sweep.json`` (every configuration, ranked),
``sweep.svg`` (selection accuracy over bottom x top, one panel per transition), the per-question
generations under ``eval/``, and next to the recipe a copy of it with the winning ``[swap]``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from hubswap.errors import HubswapError
from hubswap.evaluate.stats import Paired, p_value, paired_comparison, pct, points, wilson_interval
from hubswap.files import check_writable
from hubswap.inputs import EXPERTS
from hubswap.layermap import layer_map
from hubswap.recipe import LoadedRecipe, Swap, key_lines, load_recipe, parse_recipe
from hubswap.sweep_eval import Config, ConfigScorer, Cost
from hubswap.sweep_figure import sweep_heatmap

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The grid


def parse_range(text: str, flag: str) -> list[int]:
    """``3..8`` (inclusive), ``3`` or ``1,3,5`` as a sorted list of non-negative integers."""
    text = text.strip()
    try:
        if m := re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", text):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError
            return list(range(lo, hi + 1))
        values = sorted({int(x) for x in text.split(",")})
        if any(v < 0 for v in values):
            raise ValueError
        return values
    except ValueError:
        raise HubswapError(f"{flag} {text!r}: expected a range like 3..8, a number, or a list like 1,3,5") from None


def grid(bottoms: list[int], tops: list[int], transitions: list[int], num_layers: int) -> tuple[list[Config], int]:
    """Every combination that fits in ``num_layers`` (keeping one task layer), and how many did not."""
    configs, skipped = [], 0
    for b in bottoms:
        for u in tops:
            for t in transitions:
                if b + u + 2 * t < num_layers:
                    configs.append(Config(b, u, t))
                else:
                    skipped += 1
    return configs, skipped


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """A fixed random half of ``range(n)`` to select on, and the other half to report on."""
    order = list(range(n))
    random.Random(f"hubswap-sweep-{seed}").shuffle(order)
    return sorted(order[: n // 2]), sorted(order[n // 2:])


# ---------------------------------------------------------------------------------------------
# Statistics on per-question verdicts


def short(p: Paired) -> str:
    """``+4.0 (+7/-2, p=0.18)``: difference in percentage points, questions only the first / only the
    second got right."""
    return f"{points(p.diff)} (+{p.merged_only}/-{p.other_only}, p={p_value(p.mcnemar_p)})"


def long(p: Paired) -> str:
    """``short`` with the 95% interval of the difference (Newcombe, paired)."""
    lo, hi = p.ci95
    return (f"{points(p.diff)} [{points(lo)}, {points(hi)}] (+{p.merged_only}/-{p.other_only}, "
            f"McNemar p={p_value(p.mcnemar_p)})")


def accuracy(v: list[bool]) -> float:
    return sum(v) / len(v) if v else 0.0


@dataclass(frozen=True)
class Ranked:
    config: Config
    accuracy: float  # on the selection half
    vs_best: Paired
    vs_task: Paired
    vs_language: Paired


@dataclass(frozen=True)
class HeldOut:
    """The chosen configuration and both experts on the held-out half."""

    n: int
    accuracy: dict[str, float]
    interval: dict[str, tuple[float, float]]
    vs_task: Paired
    vs_language: Paired


def rank(verdicts: dict[str, list[bool]], configs: list[Config], select: list[int],
         heldout: list[int]) -> tuple[list[Ranked], HeldOut]:
    """Rank ``configs`` on the ``select`` questions; score the winner on the ``heldout`` ones.

    ``verdicts`` maps each configuration's name and ``task``/``language`` to per-question
    correctness, indexed by question (a configuration needs only the questions it is scored on).
    """
    rows = rank_selection(verdicts, configs, select)
    return rows, score_heldout(verdicts, rows[0].config, heldout)


def _pick(verdicts: dict[str, list[bool]], name: str, idx: list[int]) -> list[bool]:
    v = verdicts[name]
    return [v[i] for i in idx]


def rank_selection(verdicts: dict[str, list[bool]], configs: list[Config], select: list[int]) -> list[Ranked]:
    """``configs`` best first by accuracy on the ``select`` questions, with paired comparisons.

    Ties in selection accuracy go to the smaller swap (more of the task expert kept), then to the
    lower bottom.
    """
    # Layers not purely from the task expert: bottom, top and both transitions.
    ordered = sorted(configs, key=lambda c: (-accuracy(_pick(verdicts, c.name, select)),
                                             c.bottom + c.top + 2 * c.transition, c))
    best_v = _pick(verdicts, ordered[0].name, select)
    task_v, lang_v = _pick(verdicts, "task", select), _pick(verdicts, "language", select)
    rows = []
    for c in ordered:
        v = _pick(verdicts, c.name, select)
        rows.append(Ranked(c, accuracy(v), paired_comparison(v, best_v), paired_comparison(v, task_v),
                           paired_comparison(v, lang_v)))
    return rows


def score_heldout(verdicts: dict[str, list[bool]], chosen: Config, heldout: list[int]) -> HeldOut:
    """The chosen configuration and both experts on the ``heldout`` questions."""
    h = {name: _pick(verdicts, name, heldout) for name in (chosen.name, *EXPERTS)}
    return HeldOut(
        n=len(heldout),
        accuracy={k: accuracy(v) for k, v in h.items()},
        interval={k: wilson_interval(sum(v), len(v)) for k, v in h.items()},
        vs_task=paired_comparison(h[chosen.name], h["task"]),
        vs_language=paired_comparison(h[chosen.name], h["language"]),
    )


# ---------------------------------------------------------------------------------------------
# The result and its files


@dataclass(frozen=True)
class SweepResult:
    name: str
    language: str
    num_layers: int
    rows: list[Ranked]
    heldout: HeldOut
    n_questions: int
    n_select: int
    holdout: bool
    skipped: int
    files: dict[str, Path] = field(default_factory=dict)
    costs: dict[str, Cost] = field(default_factory=dict)  # each configuration, on the selection half
    winner_cost: Cost | None = None  # the chosen one again, on the held-out half

    @property
    def chosen(self) -> Config:
        return self.rows[0].config

    def table(self) -> str:
        sel = "selection half" if self.holdout else "all questions"
        out = [f"{len(self.rows)} configurations of {self.name} on MGSM-{self.language}, ranked by accuracy "
               f"on the {sel} ({self.n_select} of {self.n_questions} questions), in %; paired differences "
               f"are (config - other) in points, +only config right / -only other right, exact McNemar p",
               f"{'rank':>4}  {'bottom':>6} {'top':>4} {'trans':>5}  {'layers':<{self.num_layers}}  "
               f"{'acc %':>6}  {'vs best':<24}  {'vs task':<24}  {'vs language':<24}"]
        for i, r in enumerate(self.rows, 1):
            c = r.config
            pic = layer_map(Swap(bottom=c.bottom, top=c.top, transition=c.transition), self.num_layers).picture()
            vs_best = "(chosen)" if i == 1 else short(r.vs_best)
            out.append(f"{i:>4}  {c.bottom:>6} {c.top:>4} {c.transition:>5}  {pic}  {pct(r.accuracy):>6}  "
                       f"{vs_best:<24}  {short(r.vs_task):<24}  {short(r.vs_language):<24}")
        return "\n".join(out)

    def summary(self) -> str:
        c, h = self.chosen, self.heldout
        lines = [self.table(), ""]
        if self.skipped:
            lines.append(f"({self.skipped} combinations did not fit in {self.num_layers} layers and were skipped)")
        tied = sum(1 for r in self.rows if r.accuracy == self.rows[0].accuracy)
        worse = sum(1 for r in self.rows[1:] if r.vs_best.mcnemar_p < 0.05)
        if tied > 1:
            lines.append(f"{tied} configurations tie for the best selection accuracy; the tie goes to the "
                         "smallest swap (the most task-expert layers kept)")
        if len(self.rows) > 1:
            lines.append(f"{worse} of {len(self.rows) - 1} other configurations are worse than the chosen one "
                         "with McNemar p < 0.05 on the selection half; the rest are within noise of it")
        lines.append(f"chosen: bottom = {c.bottom}, top = {c.top}, transition = {c.transition}")

        def fmt(k: str) -> str:
            lo, hi = h.interval[k]
            return f"{pct(h.accuracy[k])}% [{pct(lo)}, {pct(hi)}]"

        if self.holdout:
            lines += [
                f"selected on a fixed half of the questions ({self.n_select}); scored on the other, held-out "
                f"half ({h.n} questions), which played no part in the choice:",
            ]
        else:
            lines.append(f"WARNING: selected and scored on the same {h.n} questions (--no-holdout): "
                         "the score below is optimistic")
        lines += [
            f"  chosen    {fmt(c.name)}",
            f"  task      {fmt('task')}   chosen - task: {long(h.vs_task)}",
            f"  language  {fmt('language')}   chosen - language: {long(h.vs_language)}",
        ]
        lines += self.cost_lines()
        if self.files:
            lines += ["", "wrote " + ", ".join(str(p) for p in self.files.values())]
        return "\n".join(lines)

    def cost_lines(self) -> list[str]:
        """Per-configuration cost: merge and evaluation, median over the grid, and the total."""
        if not self.costs:
            return []
        import statistics

        cs = list(self.costs.values())
        med = {k: statistics.median(getattr(c, k) for c in cs) for k in ("merge_s", "eval_s", "total_s")}
        total = sum(c.total_s for c in cs) + (self.winner_cost.total_s if self.winner_cost else 0.0)
        lines = ["", f"cost per configuration (median of {len(cs)}): {med['total_s']:.1f} s = merge "
                     f"{med['merge_s']:.1f} s + evaluation {med['eval_s']:.1f} s on {cs[0].questions} questions "
                     f"(cached generations cost nothing)"]
        if self.winner_cost:
            w = self.winner_cost
            lines.append(f"the chosen configuration on the held-out half: {w.total_s:.1f} s = merge {w.merge_s:.1f} s "
                         f"+ evaluation {w.eval_s:.1f} s on {w.questions} questions")
        lines.append(f"all configurations: {total:.1f} s")
        return lines

    def to_json(self) -> dict:
        c, h = self.chosen, self.heldout
        return {
            "recipe": self.name, "language": self.language, "num_layers": self.num_layers,
            "questions": self.n_questions, "selection_questions": self.n_select,
            "heldout_questions": h.n, "holdout": self.holdout,
            "selection": "fixed seeded half of the questions" if self.holdout else "all questions",
            "chosen": {"bottom": c.bottom, "top": c.top, "transition": c.transition},
            "heldout": {
                "accuracy": {("chosen" if k == c.name else k): v for k, v in h.accuracy.items()},
                "interval": {("chosen" if k == c.name else k): list(v) for k, v in h.interval.items()},
                "vs_task": h.vs_task.to_json(), "vs_language": h.vs_language.to_json(),
            },
            "configs": [
                {"rank": i, "name": r.config.name, "bottom": r.config.bottom, "top": r.config.top,
                 "transition": r.config.transition, "selection_accuracy": r.accuracy,
                 "vs_best": r.vs_best.to_json(), "vs_task": r.vs_task.to_json(),
                 "vs_language": r.vs_language.to_json(),
                 "cost": self.costs[r.config.name].to_json() if r.config.name in self.costs else None}
                for i, r in enumerate(self.rows, 1)
            ],
            "heldout_cost": self.winner_cost.to_json() if self.winner_cost else None,
        }


def write_csv(path: Path, rows: list[Ranked]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "bottom", "top", "transition", "selection_accuracy",
                    "vs_best_diff", "vs_best_p", "vs_task_diff", "vs_task_p", "vs_language_diff", "vs_language_p"])
        for i, r in enumerate(rows, 1):
            w.writerow([i, r.config.bottom, r.config.top, r.config.transition, f"{r.accuracy:.6g}",
                        f"{r.vs_best.diff:.6g}", f"{r.vs_best.mcnemar_p:.4g}", f"{r.vs_task.diff:.6g}",
                        f"{r.vs_task.mcnemar_p:.4g}", f"{r.vs_language.diff:.6g}", f"{r.vs_language.mcnemar_p:.4g}"])


def write_recipe(loaded: LoadedRecipe, chosen: Config, dest: Path, note: list[str]) -> Path:
    """A copy of the recipe with the chosen ``[swap]`` sizes, comments and all else kept.

    By default it is written beside the original so that relative model and dataset paths still
    resolve; it is validated before it is kept.
    """
    lines = loaded.text.splitlines()
    where = key_lines(loaded.text)
    if "swap.bottom" not in where or "swap.top" not in where:  # e.g. an inline table
        raise HubswapError(f"cannot edit {loaded.path}'s [swap] in place",
                           hint=f"set bottom = {chosen.bottom}, top = {chosen.top}, "
                           f"transition = {chosen.transition} by hand")
    values = {"bottom": chosen.bottom, "top": chosen.top, "transition": chosen.transition}
    drop = {where[k] - 1 for k in ("swap.transition_bottom", "swap.transition_top") if k in where}
    for key, value in values.items():
        n = where.get(f"swap.{key}")
        if n is not None:
            lines[n - 1] = re.sub(r"^([^=]*=\s*)[^#]*?(\s*(#.*)?)$", rf"\g<1>{value}\g<2>", lines[n - 1])
    missing = [f"{k} = {v}" for k, v in values.items() if f"swap.{k}" not in where]
    if missing:
        after = max(where["swap.bottom"], where["swap.top"])
        lines[after:after] = missing
        drop = {d + len(missing) if d >= after else d for d in drop}
    lines = [line for i, line in enumerate(lines) if i not in drop]
    text = "\n".join(f"# {n}" for n in note) + "\n" + "\n".join(lines) + "\n"
    parse_recipe(text, dest)  # raises RecipeError if the edit broke anything
    dest.write_text(text, encoding="utf-8")
    return dest


# ---------------------------------------------------------------------------------------------
# The command


def sweep(
    recipe: str | Path | LoadedRecipe,
    *,
    bottoms: list[int],
    tops: list[int],
    transitions: list[int],
    limit: int | None = None,
    keep: bool = False,
    output: str | Path | None = None,
    holdout: bool = True,
    recipe_out: str | Path | None = None,
    max_shard_size: str | int = "5GB",
    progress: bool = True,
    gpus: int | str | None = None,
    ray: str | None = None,
) -> SweepResult:
    """Score every configuration of the grid on the selection half, the winner on the held-out half,
    and write ``sweep.csv``, ``sweep.json``, ``sweep.svg`` and the winning recipe.

    ``gpus`` overrides ``[eval] gpus``; ``ray`` (a cluster address, "" for the local or a new one)
    runs each configuration as a task on a Ray cluster (``sweep_ray.py``)."""
    from hubswap.evaluate.backends import require_libraries

    loaded = recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe)
    r = loaded.recipe
    if ray is not None:
        from hubswap.sweep_ray import require_ray

        require_ray()  # before anything is downloaded
    require_libraries(r.eval.backend)  # every configuration is evaluated
    out = Path(output) if output else Path("sweeps") / r.name
    # Only the target language: the sweep chooses for it, and every config costs an evaluation.
    cfg = r.eval.model_copy(update={"languages": [r.eval.target_language],
                                    **({"gpus": gpus} if gpus is not None else {})})
    lim = limit if limit is not None else (cfg.limit or None)
    if holdout and lim is not None and lim < 2:
        raise HubswapError(f"--limit {lim} cannot be split into a selection and a held-out half",
                           hint="raise --limit, or pass --no-holdout")
    dest = Path(recipe_out) if recipe_out else loaded.path.with_name(f"{loaded.path.stem}.sweep.toml")
    check_writable(out)
    check_writable(dest.parent, hint="write the winning recipe elsewhere: pass --recipe-out FILE")
    if note := r.eval.default_languages_note():
        log.warning("%s", note)
    if dest.resolve().parent != loaded.path.resolve().parent and _relative_paths(loaded):
        log.warning("%s is not beside %s: its relative paths (%s) will resolve from %s", dest, loaded.path,
                    ", ".join(_relative_paths(loaded)), dest.parent)
    result, verdicts, select = _score_grid(loaded, cfg, (bottoms, tops, transitions), out, limit=lim, keep=keep,
                                           holdout=holdout, max_shard_size=max_shard_size, progress=progress,
                                           ray=ray)
    return dataclasses.replace(result, files=_write_outputs(loaded, result, verdicts, select, out, dest))


def _score_grid(loaded: LoadedRecipe, cfg, axes: tuple[list[int], list[int], list[int]], out: Path, *,
                limit: int | None, keep: bool, holdout: bool, max_shard_size: str | int,
                progress: bool, ray: str | None = None) -> tuple[SweepResult, dict[str, list[bool]], list[int]]:
    """The sweep's protocol: the experts on every question, each configuration on the selection
    half, the winner alone on the held-out half. Returns the result (no files yet), every
    model's verdicts and the selection half."""
    from hubswap.inputs import dataset_location, prepare_inputs

    r, lang = loaded.recipe, cfg.target_language
    # 1. Resolve, preflight and download once, exactly as the build does.
    inputs = prepare_inputs(loaded)
    pre = inputs.preflight
    configs, skipped = grid(*axes, pre.num_layers)
    if not configs:
        raise HubswapError(f"no configuration of the grid fits in {pre.num_layers} layers",
                           hint="bottom + top + 2 x transition must leave at least one middle layer")
    log.info("sweeping %d configurations of %s (%d layers) on MGSM-%s", len(configs), r.name, pre.num_layers, lang)
    dirs = inputs.folders(EXPERTS)
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    keys = {role: inputs.key(role) for role in EXPERTS}

    # 2. Both experts once, on every question: each half is compared with them.
    with ConfigScorer(r.swap, pre, dirs, keys, cfg, eval_dir, out / "scratch", dataset=dataset_location(loaded),
                      limit=limit, keep=keep, max_shard_size=max_shard_size, progress=progress) as scorer, \
            contextlib.ExitStack() as stack:
        verdicts = scorer.experts()
        n = len(verdicts["task"])
        if holdout and n < 2:
            raise HubswapError(f"{n} question(s) cannot be split into a selection and a held-out half",
                               hint="raise --limit, or pass --no-holdout")
        select, held = split_halves(n, cfg.seed) if holdout else (list(range(n)), list(range(n)))
        runner = scorer
        if ray is not None:  # each configuration a task on the cluster; the rest stays here
            from hubswap.sweep_ray import RayScorer

            runner = RayScorer(scorer, inputs.models, ray, progress=progress)
            stack.callback(runner.close)

        # 3. Each configuration: merge into scratch, evaluate on the selection half only, remove.
        #    Only the winner is evaluated on the held-out half (4): half the generations of scoring
        #    every configuration on every question.
        costs = runner.score_all(configs, select)

        # 4. Rank on the selection half; the winner alone on the held-out half.
        rows = rank_selection(verdicts, configs, select)
        winner_cost = None
        if holdout:
            best = rows[0].config
            log.info("chosen on the selection half: %s; scoring it on the held-out half (%d questions)", best.name, len(held))
            winner_cost = runner.score(best, held, f"{best.name}.heldout")
    heldout = score_heldout(verdicts, rows[0].config, held)
    result = SweepResult(r.name, lang, pre.num_layers, rows, heldout, n, len(select), holdout, skipped,
                         costs=costs, winner_cost=winner_cost)
    return result, verdicts, select


def _write_outputs(loaded: LoadedRecipe, result: SweepResult, verdicts: dict[str, list[bool]], select: list[int],
                   out: Path, dest: Path) -> dict[str, Path]:
    """``sweep.csv``, ``sweep.json``, the heat map and the winning recipe (at ``dest``)."""
    lang, rows = result.language, result.rows
    files = {"csv": out / "sweep.csv", "json": out / "sweep.json", "svg": out / "sweep.svg"}
    write_csv(files["csv"], rows)
    files["json"].write_text(json.dumps(result.to_json(), indent=2) + "\n")
    experts_sel = {e: accuracy([verdicts[e][i] for i in select]) for e in EXPERTS}
    files["svg"].write_text(sweep_heatmap(f"{result.name}: MGSM-{lang} accuracy over bottom x top", rows, experts_sel,
                                          questions=len(select)))
    c, h = result.chosen, result.heldout
    note = [
        f"Swap chosen by `hubswap sweep` over {len(rows)} configurations on MGSM-{lang}, "
        f"selected on {len(select)} questions" + (f", held-out accuracy {pct(h.accuracy[c.name])}% on "
                                                  f"{h.n} other questions" if result.holdout else ""),
        f"(task expert {pct(h.accuracy['task'])}%, language expert {pct(h.accuracy['language'])}%); "
        f"from {loaded.path.name}, only [swap] changed.",
    ]
    files["recipe"] = write_recipe(loaded, c, dest, note)
    return files


def _relative_paths(loaded: LoadedRecipe) -> list[str]:
    """The recipe's relative local paths (models and dataset), which resolve from its folder."""
    r = loaded.recipe
    paths = [s.path for s in r.models.roles().values() if s.path]
    if Path(r.eval.dataset).expanduser().exists() or r.eval.dataset.startswith("."):
        paths.append(r.eval.dataset)
    return [p for p in paths if not Path(p).expanduser().is_absolute()]
