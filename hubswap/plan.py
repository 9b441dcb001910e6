"""``hubswap plan``: the layer map of a recipe as a table and a one-line picture, reading no weights."""

from __future__ import annotations

import json
from pathlib import Path

from hubswap.errors import HubError, ModelFilesError
from hubswap.layermap import LayerMap, LayerStackError, is_multimodal, layer_map, text_layer_count
from hubswap.recipe import LoadedRecipe, load_recipe


def task_config(loaded: LoadedRecipe):
    """The task expert's config.json (local folder or Hub repo: one small download)."""
    src = loaded.recipe.models.task
    if not src.is_local:
        from hubswap.hub.resolve import read_remote_config

        try:
            return read_remote_config(src)
        except HubError as e:  # offline, no network, no access: the layer count plans without the Hub
            e.hint = f"{e.hint + '; or ' if e.hint else ''}pass --layers L to plan without the Hub"
            raise
    folder = loaded.resolve_path(src)
    if not folder.is_dir():  # a mistyped path: the recipe is what to fix, not the command
        raise ModelFilesError(f"task model: {folder} is not a directory",
                              hint="check the recipe's `path` (relative paths are relative to the recipe)")
    cfg_path = folder / "config.json"
    hint = "pass --layers L to plan without the model"
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelFilesError(f"cannot read {cfg_path}: {e.strerror or e}", hint=hint) from None
    except json.JSONDecodeError as e:
        raise ModelFilesError(f"{cfg_path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}", hint=hint) from None
    except UnicodeDecodeError as e:
        raise ModelFilesError(f"{cfg_path}: not UTF-8 text (byte {e.start})", hint=hint) from None


def format_plan(name: str, lmap: LayerMap, *, counted: str = "", multimodal: bool = False) -> str:
    rows = [f"{name}: {lmap.num_layers} layers{f' ({counted})' if counted else ''}; embeddings, final norm and "
            f"lm_head from the {lmap.non_layer.source} expert"]
    if multimodal:
        rows.append(f"multimodal: the vision tower and projector, whole, from the {lmap.vision.source} expert")
    rows += ["", f"{'layer':>5}  {'region':<17}  {'source':<8}  {'w(language)':>11}  {'w(task)':>7}"]
    for s in lmap.layers:
        rows.append(f"{s.index:>5}  {s.region:<17}  {s.source:<8}  {_w(s.weight):>11}  {_w(1 - s.weight):>7}")
    rows += ["", f"stack, bottom -> top (L language, T task, ~ blend): {lmap.picture()}"]
    return "\n".join(rows)


def _w(f) -> str:
    return str(f) if f.denominator != 1 else str(f.numerator)


def plan_command(recipe_path: str | Path, *, num_layers: int | None = None) -> str:
    loaded = load_recipe(recipe_path)
    counted, multimodal = "", False
    if num_layers is None:
        cfg = task_config(loaded)
        try:
            num_layers, key = text_layer_count(cfg)
        except LayerStackError as e:
            raise ModelFilesError(f"task expert ({loaded.recipe.models.task.display()}): {e}",
                                  hint="pass --layers L to plan without reading it") from None
        counted, multimodal = f"config.json {key}", is_multimodal(cfg)
    loaded.check_layers(num_layers)
    lmap = layer_map(loaded.recipe.swap, num_layers)
    return format_plan(loaded.recipe.name, lmap, counted=counted, multimodal=multimodal)
