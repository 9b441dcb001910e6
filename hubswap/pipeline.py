"""The build driver: the pipeline of docs/DESIGN.md as one readable story.

    recipe -> resolve + lock -> preflight -> download -> swap -> evaluate -> gate -> card -> publish

Each stage lives in its own module; this one only orders them and owns the build folder. The
model folder is staged in a hidden sibling and renamed into place only once it is a complete
model, so a killed build never leaves a half-written ``model/``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hubswap import __version__, interrupts
from hubswap.durable import build_lock, check_free_space, disk_full_is_an_error, nearest_folder
from hubswap.errors import HubswapError
from hubswap.files import atomic_write, check_writable, cores, fsync_path, fsync_tree, parse_size, write_json
from hubswap.hashing import cache_root, json_sha256, text_sha256
from hubswap.hub.lock import pinned_lock
from hubswap.inputs import Inputs, dataset_location, prepare_inputs, published_path, published_recipe
from hubswap.layermap import LayerMap, layer_map, uniform_map
from hubswap.licenses import decide_license, parent_license, write_license_files
from hubswap.preflight import INDEX, SIDE_FILES, check_layer_map, untrained_token_warnings
from hubswap.recipe import LoadedRecipe, load_recipe
from hubswap.records import (
    BUILD_RECORD,
    CARD_TEMPLATE,
    EVAL_RESULTS,
    LOCK_VERSION,
    PUBLISHED_LOCK,
    RECIPE_COPY,
    RECORDS_DIR,
    BuildRecord,
    FileEntry,
    LayerMapRecord,
    LicenseRecord,
    MergeBytes,
    ModelEntry,
    Output,
    OutputFile,
    RecipeRef,
)
from hubswap.swap import clonable_bytes, copy_side_files, lay_out, merge, plan_merge

if TYPE_CHECKING:
    from hubswap.evaluate.gate import GateVerdict
    from hubswap.evaluate.results import EvalResults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    output: Path | None = None
    evaluate: bool = True
    push: bool = False
    force: bool = False
    limit: int | None = None
    max_shard_size: str | int = "5GB"
    progress: bool = True
    clone: bool = True  # and the recipe's [swap] clone
    gpus: int | str | None = None  # overrides [eval] gpus


@dataclass(frozen=True)
class BuildResult:
    build_dir: Path
    model_dir: Path
    layer_map: LayerMap
    eval_results: EvalResults | None = None
    published: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    merged: MergeBytes | None = None

    def summary(self) -> str:
        lines = [f"built {self.model_dir}", f"layers (bottom->top): {self.layer_map.picture()}"]
        if self.merged is not None:
            lines.append(f"tensors: {self.merged.summary()}")
        if self.eval_results is None:
            lines.append("not evaluated (--no-eval)")
        else:
            from hubswap.evaluate import format_table

            lines.append(format_table(self.eval_results))  # its last line is the gate's verdict
        if self.published:
            lines.append(f"published {self.published}")
        return "\n".join(lines)


def build(recipe_path: str | Path, opts: BuildOptions = BuildOptions()) -> BuildResult:
    # Whatever happens inside, the build folder's lock is released and a full disk is one line.
    with contextlib.ExitStack() as held:
        return _build(recipe_path, opts, held)


def _build(recipe_path: str | Path, opts: BuildOptions, held: contextlib.ExitStack) -> BuildResult:
    loaded = load_recipe(recipe_path)
    recipe = loaded.recipe
    build_dir = (opts.output or Path("builds") / recipe.name).resolve()
    max_shard = _shard_size(opts.max_shard_size)
    check_writable(build_dir)  # before anything is resolved or downloaded
    template = loaded.card_template()  # the recipe's card template, when it names one
    if opts.evaluate:
        from hubswap.evaluate.backends import require_libraries

        require_libraries(recipe.eval.backend)
        if note := recipe.eval.default_languages_note():
            log.warning("%s", note)
        from hubswap.evaluate.data import check_hub_reachable, is_local

        if not is_local(dataset_location(loaded)):
            check_hub_reachable()  # before the merge, not after it

    # 1-2. Resolve every model to something pinned (a commit SHA or a local folder), then
    # preflight from configs, tokenizers and safetensors headers: no weight is read.
    inputs = prepare_inputs(loaded)
    pre = inputs.preflight
    loaded.check_layers(pre.num_layers)
    lmap = layer_map(recipe.swap, pre.num_layers, pre.stack)
    check_layer_map(pre, lmap)
    late = untrained_token_warnings(inputs.models, pre, non_layer=recipe.swap.non_layer,
                                    files_from=recipe.swap.files_from, prompt=recipe.eval.prompt)
    for w in late:
        log.warning("preflight: %s", w)
    log.info("preflight ok: %d layers (%s), %d tensors; stack %s", pre.num_layers, pre.stack.prefix,
             len(pre.tensors["task"]), lmap.picture())
    if recipe.swap.vision and not pre.stack.multimodal:
        log.warning("swap.vision is set, but the task expert is not a multimodal model: it has no vision side")
    # The licence, from the parents' cards: inherited, the recipe's, or refused before any download.
    license = decide_license(
        {role: parent_license(m) for role, m in inputs.models.items()},
        {role: published_path(src.path) or src.display() for role, src in recipe.models.roles().items()},
        recipe.publish, model_name=recipe.publish.repo.split("/")[-1] if recipe.publish else recipe.name)

    # 3. Download only what the swap (and the comparison) needs: a no-op for local folders.
    compared = [r for r in recipe.eval.compare if r not in ("task", "language")] if opts.evaluate else []
    dirs = inputs.folders(["task", "language", *compared])

    # 4. Swap, into a staging folder renamed into place when complete; refused before anything is
    # written when it cannot fit, or while another build writes the same folder.
    model_dir = build_dir / "model"
    plan = plan_merge(lmap, pre.tensors, dirs, out_dtype=recipe.swap.dtype, max_shard_size=max_shard)
    # Laid out for cloning where the experts' files clone into the build's filesystem: the blocks
    # cloned then take no new disk.
    plan = lay_out(plan, nearest_folder(build_dir), clone=opts.clone and recipe.swap.clone)
    need = _output_size(plan, dirs[recipe.swap.files_from]) - clonable_bytes(plan)
    check_free_space(build_dir, need, "the merged model")
    held.enter_context(disk_full_is_an_error(build_dir, "the build"))
    held.enter_context(build_lock(build_dir))
    with _staging(build_dir) as stage:
        # Inputs are hashed while the merge streams, one file per thread, largest first, as many
        # threads as cores. Outputs are not hashed here: at 1.5 GB/s sha256 would cost more than
        # the whole merge, and publishing hashes them anyway.
        # On any failure (Ctrl-C included) the hashes not started are dropped: the pool's exit
        # would otherwise hash every input file before the build could stop. Ctrl-C is taken
        # between steps while the threads run (hubswap/interrupts.py: else it can hang the exit).
        with interrupts.deferred(), ThreadPoolExecutor(max_workers=cores(), thread_name_prefix="hubswap-sha256") as pool:
            try:
                pool.submit(_preload_card_libraries)  # ~0.3 s of imports, hidden behind the kernel's copies
                pending = inputs.file_records(pool, fetched=list(dirs))
                made = merge(plan, stage, progress=opts.progress)
                interrupts.check()
                side = copy_side_files(dirs[recipe.swap.files_from], stage, recipe.swap.dtype)
                license = write_license_files(license, inputs.models, stage)
                atomic_write(stage / RECIPE_COPY, published_recipe(loaded))
                if template is not None:
                    shutil.copyfile(template, stage / CARD_TEMPLATE)
                interrupts.check()
                hashes = {role: {f: interrupts.result(e) for f, e in entries.items()}
                          for role, entries in pending.items()}
            except BaseException:  # Ctrl-C or a failure: the hashes not yet started are dropped, not waited for
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        outputs = {name: OutputFile(size=(stage / name).stat().st_size)
                   for name in sorted([*plan.shard_names(), INDEX, *side, *license.files])}
        record = make_build_record(loaded, inputs, hashes, lmap, outputs, names=pre.tensors["task"], merged=made,
                                   license=license, max_shard_size=max_shard)
        write_json(stage / BUILD_RECORD, record.to_json())
        if (pinned := pinned_lock(loaded, inputs.models)) is not None:
            write_json(stage / PUBLISHED_LOCK, pinned.to_json())
        write_card(stage)
        replaced = replace_build(stage, model_dir, build_dir / "eval")
    log.debug("model written to %s", model_dir)  # the summary names it
    if replaced and not opts.evaluate:
        log.warning("replaced an evaluated build by an unevaluated one (--no-eval): %s now holds the new "
                    "model and no evaluation; the previous model's went with it (%s)", build_dir, replaced)

    drop_stale_baselines(build_dir / "baselines", recipe.eval.baselines)

    # 5-6. Evaluate against the experts, then apply the gate.
    results = None
    if opts.evaluate:
        baselines = build_baselines(inputs, dirs, build_dir / "baselines", max_shard, progress=opts.progress)
        results, verdict = evaluate_build(inputs, model_dir, build_dir / "eval", dirs, limit=opts.limit,
                                          baselines=baselines, gpus=opts.gpus)
        write_card(model_dir)
        if not verdict.passed:
            raise verdict.error(f"{build_dir / 'eval'} and {model_dir / EVAL_RESULTS}")

    # 7. Publish the model folder in one commit.
    published = None
    if opts.push:
        from hubswap.hub.publish import publish

        published = publish(model_dir, force=opts.force)
    return BuildResult(build_dir, model_dir, lmap, results, published, (*pre.warnings, *late), made)


# -- stages -----------------------------------------------------------------------------------


def make_build_record(loaded: LoadedRecipe, inputs: Inputs, hashes: dict[str, dict[str, FileEntry]], lmap: LayerMap,
                      outputs: dict[str, OutputFile], *, names=(), merged: MergeBytes | None = None,
                      license: LicenseRecord | None = None, max_shard_size: int | None = None) -> BuildRecord:
    """The build record, ``model/hubswap/lock.json`` (not the recipe's lock: ``hubswap.hub.lock``)."""
    from importlib.metadata import version

    models = {
        role: ModelEntry(repo=src.repo, revision=src.revision if src.repo else None,
                         commit=inputs.models[role].commit, path=published_path(src.path), files=hashes.get(role, {}))
        for role, src in loaded.recipe.models.roles().items()
    }
    return BuildRecord(
        lock_version=LOCK_VERSION,
        hubswap_version=__version__,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        recipe=RecipeRef(path=loaded.path.name, name=loaded.recipe.name, sha256=text_sha256(loaded.text)),
        models=models,
        layer_map=LayerMapRecord.model_validate(lmap.to_json(names)),
        output=Output(dtype=loaded.recipe.swap.dtype, num_layers=lmap.num_layers,
                      shards=sorted(f for f in outputs if f.endswith(".safetensors")), files=outputs,
                      merge=merged, max_shard_size=max_shard_size),
        # What the merge ran on: core dependencies only (the merge never imports torch or transformers).
        versions={"hubswap": __version__, **{p: version(p) for p in ("numpy", "safetensors", "huggingface_hub")}},
        license=license,
    )


def build_baselines(inputs: Inputs, dirs: dict[str, Path], folder: Path, max_shard: int, *,
                    progress: bool = True) -> dict[str, Path]:
    """The recipe's ``[eval] baselines``, merged by the same streaming merge as the swap into
    ``folder/<name>`` (beside the model, never published): ``soup`` averages every tensor."""
    recipe, pre = inputs.loaded.recipe, inputs.preflight
    out = {}
    for name in recipe.eval.baselines:  # "soup", the only one so far
        dest = folder / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        plan = plan_merge(uniform_map(pre.num_layers, pre.stack), pre.tensors, dirs, out_dtype=recipe.swap.dtype,
                          max_shard_size=max_shard)
        merge(plan, dest, progress=progress, durable=False)
        copy_side_files(dirs[recipe.swap.files_from], dest, recipe.swap.dtype)
        log.info("baseline %s written to %s", name, dest)
        out[name] = dest
    return out


def drop_stale_baselines(folder: Path, wanted: list[str]) -> None:
    """Remove the baselines an earlier build made that the recipe no longer asks for (each as large
    as the model); the folder goes with the last."""
    if not folder.is_dir():
        return
    for old in sorted(folder.iterdir()):
        if old.name in wanted:
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
        log.info("removed the baseline %s, which the recipe's [eval] baselines no longer names", old)
    if not wanted:
        folder.rmdir()


BASELINE_SOURCES = {"soup": "the uniform average of the task and language experts (every tensor, 1/2 each)"}


def evaluate_build(inputs: Inputs, model_dir: Path, eval_dir: Path, dirs: dict[str, Path], *,
                   limit: int | None, baselines: dict[str, Path] | None = None,
                   gpus: int | str | None = None) -> tuple[EvalResults, GateVerdict]:
    """MGSM on the merged model, the models to compare and the baselines, then the gate; writes
    eval_results.json. Returns the results and the gate's verdict."""
    from hubswap.evaluate import apply_gate, run_evaluation

    loaded = inputs.loaded
    cfg, recipe = loaded.recipe.eval, loaded.recipe
    if gpus is not None:
        cfg = cfg.model_copy(update={"gpus": gpus})
    models: dict[str, Path] = {"merged": model_dir}
    for role in cfg.compare:
        if role not in dirs:
            raise HubswapError(f"eval.compare names {role!r}, but its weights were not downloaded")
        models[role] = dirs[role]
    keys = {role: inputs.key(role) for role in cfg.compare}
    for name, folder in (baselines or {}).items():  # a baseline is a function of the experts and the dtype
        models[name] = folder
        keys[name] = f"{name}-" + json_sha256([__version__, inputs.key("task"), inputs.key("language"),
                                               recipe.swap.dtype, recipe.swap.files_from])
    results = run_evaluation(
        models, cfg, eval_dir, dataset=dataset_location(loaded),
        cache_keys=keys, cache_dir=cache_root() / "eval", limit=limit,
    )
    verdict = apply_gate(results, recipe.gate)
    # What is published names the data and the models as the recipe does, never by a folder of
    # this machine (the Hub cache, the build folder, the dataset copy).
    roles = recipe.models.roles()
    sources = {name: (BASELINE_SOURCES[name] if name in BASELINE_SOURCES else
                      "this model" if (src := roles.get(name)) is None else
                      f"{src.repo}@{inputs.models[name].commit}" if src.repo else published_path(src.path))
               for name in results.models}
    results = results.model_copy(update={
        "gate": verdict.record(),
        "settings": results.settings.model_copy(update={"dataset": published_path(cfg.dataset)}),
        "models": {name: m.model_copy(update={"source": sources[name]}) for name, m in results.models.items()},
    })
    results.write(model_dir / EVAL_RESULTS)
    # lm-eval's own files: in the build's eval folder, and published beside eval_results.json.
    from hubswap.evaluate.lm_eval_files import FOLDER, write_lm_eval_files

    published_copy = model_dir / RECORDS_DIR / FOLDER
    shutil.rmtree(published_copy, ignore_errors=True)
    for folder in write_lm_eval_files(results, eval_dir, eval_dir / FOLDER):
        shutil.copytree(folder, published_copy / folder.name)
    return results, verdict


def _preload_card_libraries() -> None:
    import huggingface_hub.repocard  # noqa: F401
    import jinja2  # noqa: F401

    import hubswap.card  # noqa: F401


def write_card(model_dir: Path) -> Path:
    from hubswap.card import write_card as _write

    return _write(model_dir)


# -- helpers ----------------------------------------------------------------------------------


def _shard_size(size: str | int) -> int:
    try:
        return parse_size(size)
    except ValueError as e:
        raise HubswapError(f"--max-shard-size: {e}") from None


class _staging:
    """A hidden sibling folder of ``<build>/model`` removed on any failure, stale ones swept first."""

    def __init__(self, build_dir: Path):
        self.build_dir = build_dir

    def __enter__(self) -> Path:
        self.build_dir.mkdir(parents=True, exist_ok=True)
        for pattern in (".model.partial-*", ".model.old-*", ".eval.old-*"):  # a killed build's leftovers
            for stale in self.build_dir.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        self.path = self.build_dir / f".model.partial-{os.getpid()}"
        self.path.mkdir()
        return self.path

    def __exit__(self, *exc) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)


def _output_size(plan, side_from: Path) -> int:
    """What the model folder will take: the tensors, the side files, and 1 MiB for headers, index,
    records and card."""
    side = sum((side_from / f).stat().st_size for f in SIDE_FILES if (side_from / f).is_file())
    return plan.total_size + side + (1 << 20)


def replace_build(new: Path, dest: Path, eval_dir: Path) -> str | None:
    """Move the complete model ``new`` to ``dest``, replacing the previous build's model there and,
    with it, that model's evaluation files (``eval_dir``): a build folder never holds one model
    beside another model's generations. Renames only, never a mix of two models' files; until this
    runs, the previous build is untouched (a Ctrl-C during the merge leaves it as it was).

    Durable: every file and folder of ``new`` reaches the disk before the rename publishes it, and
    the renames themselves (the parent folder) after. Returns what of an evaluated previous build
    was removed (for the caller to say), or None when ``dest`` held no evaluated model."""
    fsync_tree(new)
    evaluated = (dest / EVAL_RESULTS).is_file()
    removed = [str(p) for p in (dest / EVAL_RESULTS, eval_dir) if p.exists()] if evaluated else []
    old = []
    for path in (dest, eval_dir):
        if path.exists():
            old.append(path.with_name(f".{path.name}.old-{os.getpid()}"))
            os.rename(path, old[-1])
    os.rename(new, dest)
    fsync_path(dest.parent)
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return ", ".join(removed) if evaluated else None
