"""``hubswap plan``: the layer map of a recipe as a table and a one-line picture, reading no weights."""

from __future__ import annotations

import json
from pathlib import Path

from hubswap.errors import ModelFilesError
from hubswap.layermap import LayerMap, layer_map
from hubswap.recipe import LoadedRecipe, load_recipe


def num_layers_of(loaded: LoadedRecipe) -> int:
    """``num_hidden_layers`` from the task expert's config.json (local folder or Hub repo)."""
    src = loaded.recipe.models.task
    if src.is_local:
        cfg_path = loaded.resolve_path(src) / "config.json"
        hint = "pass --layers L to plan without the model"
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ModelFilesError(f"cannot read {cfg_path}: {e.strerror or e}", hint=hint) from None
        except json.JSONDecodeError as e:
            raise ModelFilesError(f"{cfg_path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}", hint=hint) from None
        except UnicodeDecodeError as e:
            raise ModelFilesError(f"{cfg_path}: not UTF-8 text (byte {e.start})", hint=hint) from None
    else:
        from hubswap.hub import read_remote_config

        cfg = read_remote_config(src)
    n = cfg.get("num_hidden_layers") if isinstance(cfg, dict) else None
    if type(n) is not int or n < 1:
        raise ModelFilesError(
            f"task expert's config.json ({src.display()}) has no positive integer num_hidden_layers "
            f"(found {n!r})", hint="pass --layers L to plan without reading it",
        )
    return n


def format_plan(name: str, lmap: LayerMap) -> str:
    rows = [f"{name}: {lmap.num_layers} layers; embeddings, final norm and lm_head from the "
            f"{lmap.non_layer.source} expert", "",
            f"{'layer':>5}  {'region':<17}  {'source':<8}  {'w(language)':>11}  {'w(task)':>7}"]
    for s in lmap.layers:
        rows.append(f"{s.index:>5}  {s.region:<17}  {s.source:<8}  {_w(s.weight):>11}  {_w(1 - s.weight):>7}")
    rows += ["", f"stack, bottom -> top (L language, T task, ~ blend): {lmap.picture()}"]
    return "\n".join(rows)


def _w(f) -> str:
    return str(f) if f.denominator != 1 else str(f.numerator)


def plan_command(recipe_path: str | Path, *, num_layers: int | None = None) -> str:
    loaded = load_recipe(recipe_path)
    n = num_layers if num_layers is not None else num_layers_of(loaded)
    loaded.check_layers(n)
    return format_plan(loaded.recipe.name, layer_map(loaded.recipe.swap, n))
