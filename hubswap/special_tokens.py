"""Special tokens the merged model needs, and whether the expert giving its embeddings trained them.

A continued-pretraining expert (Lugha-Llama) never saw Llama 3's chat tokens, so its embedding
and lm_head rows for ``<|eot_id|>`` and the header tokens are still the base's untrained ones.
Taking ``non_layer`` from it while the merged model's end-of-sequence set (generation_config) or
chat template uses those tokens gives a model that may never end a turn. Preflight warns about it
by comparing those few rows with the base's, read as byte ranges (a ranged GET on the Hub), before
any weight is downloaded.
"""

from __future__ import annotations

import logging

from hubswap.compat import ModelFiles, Preflight, read_json
from hubswap.safetensors_format import DTYPE_SIZE, NUMPY_DTYPE

log = logging.getLogger(__name__)

EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")
_FLOATS = ("F32", "F16", "BF16")


def needed_tokens(model: ModelFiles, prompt: str) -> dict[str, list[str]]:
    """Special tokens the merged model needs, by reason: those that end a generation (its
    generation_config.json's eos ids, else the tokenizer's eos) and those its chat template writes.
    ``model`` is the ``files_from`` expert, whose configs and tokenizer the merged model gets."""
    tok = read_json(model, "tokenizer.json") or {}
    specials = {t["content"]: t["id"] for t in tok.get("added_tokens") or [] if t.get("special")}
    by_id = {i: t for t, i in specials.items()}
    out: dict[str, list[str]] = {}
    gen = read_json(model, "generation_config.json") or {}
    eos = gen.get("eos_token_id")
    if eos is None:
        eos_tok = _token_text((read_json(model, "tokenizer_config.json") or {}).get("eos_token"))
        eos_names = [eos_tok] if eos_tok in specials else []
    else:
        eos_names = [by_id[i] for i in (eos if isinstance(eos, list) else [eos]) if i in by_id]
    if eos_names:
        out["the end-of-sequence set"] = eos_names
    template = (read_json(model, "tokenizer_config.json") or {}).get("chat_template")
    if template is None:
        template = model.read_text("chat_template.jinja")
    if isinstance(template, list):  # named templates
        template = " ".join(t.get("template", "") for t in template)
    if isinstance(template, str):
        used = [t for t in specials if t in template]
        if used:
            out["the chat prompt mode" if prompt == "chat" else "the chat template"] = used
    return out


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _rows(model: ModelFiles, info, ids: list[int]):
    """float32 rows ``ids`` of a 2-D tensor, read as one byte range from the lowest to the highest."""
    import numpy as np

    width = info.shape[1] * DTYPE_SIZE[info.dtype]
    lo, hi = min(ids), max(ids)
    raw = model.read_range(info.file, info.begin + lo * width, (hi - lo + 1) * width)
    a = np.frombuffer(raw, dtype=NUMPY_DTYPE[info.dtype]).reshape(hi - lo + 1, info.shape[1])
    a = (a.astype(np.uint32) << 16).view(np.float32) if info.dtype == "BF16" else a.astype(np.float32)
    return a[[i - lo for i in ids]]


def untrained_token_warnings(models: dict[str, ModelFiles], pre: Preflight, *, non_layer: str,
                             files_from: str, prompt: str) -> list[str]:
    """A warning when special tokens the merged model needs have, in the ``non_layer`` expert,
    embedding and lm_head rows identical to the base's (never trained). Needs ``base``."""
    import numpy as np

    if "base" not in models:
        return []
    needed = needed_tokens(models[files_from], prompt)
    tok = read_json(models[files_from], "tokenizer.json") or {}
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens") or []}
    names = sorted({t for ts in needed.values() for t in ts}, key=lambda t: ids[t])
    if not names:
        return []
    expert, base = pre.tensors[non_layer], pre.tensors["base"]
    rows = [ids[t] for t in names]
    same = np.ones(len(rows), bool)
    for tensor in EMBEDDINGS:
        a, b = expert.get(tensor), base.get(tensor)
        if a is None or b is None or a.dtype not in _FLOATS or b.dtype not in _FLOATS or max(rows) >= a.shape[0]:
            return []
        same &= (_rows(models[non_layer], a, rows) == _rows(models["base"], b, rows)).all(axis=1)
    untrained = [t for t, s in zip(names, same, strict=True) if s]
    if not untrained:
        return []
    why = "; ".join(f"{reason} uses {', '.join(t for t in ts if t in untrained)}"
                    for reason, ts in needed.items() if any(t in untrained for t in ts))
    return [
        f"non_layer = \"{non_layer}\": the merged model's embeddings and lm_head come from the {non_layer} "
        f"expert ({models[non_layer].display}), whose rows for {', '.join(untrained)} equal the base's "
        f"(never trained), while {why}: the merged model may not end its turns. Consider "
        f"non_layer = \"{'task' if non_layer == 'language' else 'language'}\" or an expert trained on them."
    ]
