"""Preflight: can these experts (and their base) be layer-swapped, and what will the merge miss?

Everything here reads only config.json, tokenizer files, the safetensors index and the
safetensors *headers*, never a weight. The same checks run on local folders and, through
``hubswap.hub``, on Hub repos before anything large is downloaded.

The last section reads a few weight *rows* as byte ranges (special tokens, see
:func:`untrained_token_warnings`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hubswap.errors import IncompatibleModelsError, ModelFilesError, UnsafeWeightsError
from hubswap.hashing import text_sha256
from hubswap.layermap import LayerStack, LayerStackError, find_layer_stack
from hubswap.safetensors_format import DATA_START, DTYPE_SIZE, FLOATS, read_header_file, to_float32

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)
# Files taken from the `files_from` expert besides the weights.
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
# Config keys that fix the shapes and the computation of a transformer stack, compared after
# ``resolved_config`` has filled in defaults and renames ("rope" is theta and scaling together).
STRUCTURAL_KEYS = (
    "model_type", "architectures", "num_hidden_layers", "hidden_size", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
    "hidden_act", "rope", "rms_norm_eps", "attention_bias", "mlp_bias", "max_position_embeddings",
)
# Keys whose difference is reported but tolerated (fine-tunes legitimately change them).
SOFT_KEYS = ("rope", "rms_norm_eps", "max_position_embeddings")
log = logging.getLogger(__name__)


class ModelFiles(Protocol):
    """Read-only access to one model's small files, wherever they live."""

    role: str
    display: str

    def files(self) -> list[str]: ...
    def read_text(self, name: str) -> str | None: ...
    def safetensors_header(self, name: str) -> dict: ...


class LocalModelFiles:
    """A model folder on disk."""

    def __init__(self, role: str, path: Path, display: str | None = None):
        self.role = role
        self.path = Path(path)
        self.display = display or str(path)
        if not self.path.is_dir():
            raise ModelFilesError(f"{role} model: {self.path} is not a directory",
                                  hint="check the recipe's `path` (relative paths are relative to the recipe)")

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())

    def read_text(self, name: str) -> str | None:
        p = self.path / name
        return p.read_text(encoding="utf-8") if p.is_file() else None

    def safetensors_header(self, name: str) -> dict:
        return read_header_file(self.path / name)

    def read_range(self, name: str, start: int, length: int) -> bytes:
        with open(self.path / name, "rb") as f:
            f.seek(start)
            return f.read(length)


def read_json(model: ModelFiles, name: str) -> dict | None:
    text = model.read_text(name)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ModelFilesError(f"{model.role} model {model.display}: {name} is not valid JSON ({e})") from None


def weight_files(model: ModelFiles) -> list[str]:
    """The safetensors files holding the weights; refuses pickled checkpoints."""
    files = model.files()
    if INDEX in files:
        index = read_json(model, INDEX) or {}
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if s not in files]
        if missing:
            raise ModelFilesError(f"{model.role} model {model.display}: {INDEX} names missing shard(s) {missing}")
        return shards
    if SINGLE in files:
        return [SINGLE]
    pickled = [f for f in files if f.endswith(PICKLED_SUFFIXES)]
    if pickled:
        raise UnsafeWeightsError(
            f"{model.role} model {model.display} has only pickled weights ({', '.join(pickled[:3])})",
            hint="hubswap reads safetensors only: pickled checkpoints can run arbitrary code when loaded. "
            "Convert them once in a trusted environment (save_pretrained(safe_serialization=True)).",
        )
    raise ModelFilesError(f"{model.role} model {model.display} has no safetensors weights")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    begin: int  # absolute byte offsets in `file`
    end: int


def tensor_table(model: ModelFiles) -> dict[str, TensorInfo]:
    """Every tensor of the model with its dtype, shape and absolute byte range, from headers only."""
    table: dict[str, TensorInfo] = {}
    for f in weight_files(model):
        header = model.safetensors_header(f)
        start = header.pop(DATA_START)
        for name, meta in header.items():
            if name in table:
                raise ModelFilesError(f"{model.role} model {model.display}: tensor {name} is stored twice")
            b, e = meta["data_offsets"]
            table[name] = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), f, start + b, start + e)
    return table


def index_disagreement(model: ModelFiles, table: dict[str, TensorInfo]) -> str | None:
    """A warning naming both sides when the safetensors index disagrees with the shards' headers.

    The headers are what the merge reads; an index can go stale when shards are re-uploaded
    without it (a repo first saved with ``score.weight`` and later given an ``lm_head.weight``).
    """
    if INDEX not in model.files():
        return None
    weight_map = (read_json(model, INDEX) or {}).get("weight_map") or {}
    index_only = sorted(n for n in weight_map if n not in table)
    header_only = sorted(n for n in table if n not in weight_map)
    moved = sorted(n for n in weight_map if n in table and weight_map[n] != table[n].file)
    if not (index_only or header_only or moved):
        return None
    parts = []
    if index_only:
        parts.append(f"the index lists {_some(index_only)}, which no shard header holds")
    if header_only:
        parts.append(f"the shard headers hold {_some(header_only)}, which the index does not list")
    if moved:
        parts.append(f"the index puts {_some(moved)} in another shard than the header does")
    return (f"{model.role} model {model.display}: {INDEX} disagrees with the shards' headers ("
            + "; ".join(parts) + "); the headers are used")


def _merges(model_section: dict) -> list[list[str]] | None:
    """BPE merges in one spelling: tokenizers >= 0.20 saves ``["a", "b"]``, older ones ``"a b"``."""
    merges = model_section.get("merges")
    if not isinstance(merges, list):
        return merges
    return [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]


def vocabulary_fingerprint(model: ModelFiles) -> tuple[str, dict[str, int]] | None:
    """(sha256, token->id) of the tokenizer's vocabulary, or ``None`` when it has no tokenizer files.

    The fingerprint covers the tokens, their ids and the BPE merges (in one spelling), so the same
    tokenizer saved by two versions of ``tokenizers`` has the same fingerprint.
    """
    tok = read_json(model, "tokenizer.json")
    if tok is not None:
        vocab = dict((tok.get("model") or {}).get("vocab") or {})
        for t in tok.get("added_tokens") or []:
            vocab.setdefault(t["content"], t["id"])
        blob = json.dumps([sorted(vocab.items()), _merges(tok.get("model") or {})], sort_keys=True)
        return text_sha256(blob), vocab
    raw = model.read_text("vocab.json")
    if raw is not None:
        vocab = json.loads(raw)
        return text_sha256(json.dumps(sorted(vocab.items()))), vocab
    return None


def resolved_config(cfg: dict, *, library: bool = True) -> dict:
    """What a config.json means, for comparing two of them: defaults and renames resolved.

    With ``library`` (and transformers installed), the architecture's transformers config class
    fills in what the file leaves out (``head_dim`` None means ``hidden_size //
    num_attention_heads`` for Llama, not for every architecture) and reads both spellings of a key
    (transformers v4's ``rope_theta``/``rope_scaling`` and ``torch_dtype``, v5's
    ``rope_parameters`` and ``dtype``). Without it the same renames and the usual ``head_dim``
    default are applied by hand. Rope comes out as one ``rope`` dict (theta included), the dtype
    as ``dtype``. A model type transformers does not know is compared as written.
    """
    out = dict(cfg)
    cls = _config_class(cfg.get("model_type")) if library else None
    if cls is not None:
        try:
            out = cls.from_dict(dict(cfg)).to_dict()
        except Exception as e:  # a config transformers cannot read: compare it as written
            log.debug("config of model_type %r not resolved by transformers: %s", cfg.get("model_type"), e)
    rope = out.pop("rope_parameters", None)
    scaling, theta = out.pop("rope_scaling", None), out.pop("rope_theta", None)
    if not isinstance(rope, dict):  # transformers v4 spelling
        rope = dict(scaling) if isinstance(scaling, dict) else {}
        if theta is not None:
            rope["rope_theta"] = theta
    if "type" in rope and "rope_type" not in rope:  # the oldest spelling of rope_type
        rope["rope_type"] = rope.pop("type")
    if rope.get("rope_type") == "default":
        rope.pop("rope_type")
    out["rope"] = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                   for k, v in sorted(rope.items())} or None
    dtype = out.pop("torch_dtype", None) or out.get("dtype")
    out["dtype"] = str(dtype).removeprefix("torch.") if dtype is not None else None
    hidden, heads = out.get("hidden_size"), out.get("num_attention_heads")
    if out.get("head_dim") is None and isinstance(hidden, int) and isinstance(heads, int) and heads:
        out["head_dim"] = hidden // heads
    return out


def _config_class(model_type):
    """transformers' config class for ``model_type``, or None (unknown type, or no transformers)."""
    if not isinstance(model_type, str):
        return None
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:
        return None
    return CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else None


def _config_differences(models: dict[str, ModelFiles], configs: dict[str, dict], ref_role: str,
                        *, library: bool) -> tuple[list[str], list[str]]:
    """(problems, warnings) from comparing each config's meaning with the reference's."""
    meaning = {role: resolved_config(cfg, library=library) for role, cfg in configs.items()}
    problems, warnings = [], []
    for role, cfg in meaning.items():
        if role == ref_role:
            continue
        who = f"{role} ({models[role].display}) vs task ({models[ref_role].display})"
        for key in STRUCTURAL_KEYS:
            a, b = meaning[ref_role].get(key), cfg.get(key)
            if a != b:
                (warnings if key in SOFT_KEYS else problems).append(f"{who}: config.json {key}: {b!r} != {a!r}")
    return problems, warnings


@dataclass(frozen=True)
class Preflight:
    """What the checks established: the shared layer count, tensors and per-model tables."""

    num_layers: int
    tensors: dict[str, dict[str, TensorInfo]]  # role -> name -> info
    configs: dict[str, dict]
    warnings: tuple[str, ...] = ()
    only_in: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """role -> tensors that this model has and the task expert lacks, or (for ``task``) that the
    task expert has and the language expert lacks; see ``check_layer_map``."""
    stack: LayerStack | None = None
    """The task expert's language-model layers (``hubswap.layermap.find_layer_stack``)."""


def check_compatible(models: dict[str, ModelFiles]) -> Preflight:
    """Check every model against the task expert; raise ``IncompatibleModelsError`` listing all mismatches."""
    ref_role = "task"
    problems: list[str] = []
    warnings: list[str] = []
    configs: dict[str, dict] = {}
    for role, m in models.items():
        cfg = read_json(m, "config.json")
        if cfg is None:
            problems.append(f"{role} model {m.display}")
        else:
            configs[role] = cfg
    if problems:  # not models at all: nothing to compare yet
        raise ModelFilesError(f"not a model folder (no config.json): {', '.join(problems)}",
                              hint="a model folder holds config.json and its *.safetensors weights, as "
                              "save_pretrained writes them; check the recipe's `path` or `repo`")

    # The spelling rules by hand first: importing transformers (and with it torch) costs seconds,
    # more than a small merge. Only configs that still differ go to transformers' config classes,
    # which know each architecture's defaults and have the last word.
    found = _config_differences(models, configs, ref_role, library=False)
    if found != ([], []):
        found = _config_differences(models, configs, ref_role, library=True)
    problems += found[0]
    warnings += found[1]

    tensors = {role: tensor_table(m) for role, m in models.items()}
    warnings += [w for role, m in models.items() if (w := index_disagreement(m, tensors[role]))]
    ref_t = tensors[ref_role]
    only_in: dict[str, tuple[str, ...]] = {}
    for role, table in tensors.items():
        if role == ref_role:
            continue
        who = f"{role} ({models[role].display}) vs task"
        missing = [n for n in ref_t if n not in table]
        extra = [n for n in table if n not in ref_t]
        if role == "language" and missing:
            only_in[ref_role] = tuple(missing)
        if extra:
            only_in[role] = tuple(extra)
        # Whether a tensor one expert lacks matters depends on the layer map (check_layer_map);
        # the base is never merged.
        if missing:
            warnings.append(f"{who}: {len(missing)} tensor(s) only the task expert has: {_some(missing)}")
        if extra:
            kept = " (not part of the merged model, which has the task expert's tensors)" if role == "language" else ""
            warnings.append(f"{who}: {len(extra)} tensor(s) only the {role} model has: {_some(extra)}{kept}")
        for name, info in ref_t.items():
            other = table.get(name)
            if other is not None and other.shape != info.shape:
                problems.append(f"{who}: tensor {name} has shape {list(other.shape)} != {list(info.shape)}")

    vocabs = {role: vocabulary_fingerprint(m) for role, m in models.items()}
    if vocabs[ref_role] is None:
        warnings.append("task expert has no tokenizer.json/vocab.json: vocabulary identity not checked")
    for role, v in vocabs.items():
        if role == ref_role or v is None or vocabs[ref_role] is None:
            continue
        if v[0] != vocabs[ref_role][0]:
            problems.append(f"{role} vs task: tokenizer vocabulary differs ({_vocab_diff(vocabs[ref_role][1], v[1])})")

    if problems:
        raise IncompatibleModelsError(problems)
    stack = layer_stack(models[ref_role], configs[ref_role], tensors[ref_role])
    return Preflight(stack.num_layers, tensors, configs, tuple(warnings), only_in, stack)


def check_layer_map(pre: Preflight, lmap) -> None:
    """Refuse a merge whose layer map needs a tensor from an expert that does not have it.

    The merged model has the task expert's tensors. One the language expert lacks is fine while
    the map takes it wholly from the task expert, and a refusal when the map takes or blends it
    from the language expert.
    """
    needed = [n for n in pre.only_in.get("task", ()) if lmap.for_tensor(n).weight != 0]
    if needed:
        raise IncompatibleModelsError([
            f"language expert lacks {len(needed)} tensor(s) that the layer map takes from it: {_some(needed)}"
        ])


def layer_stack(model: ModelFiles, config: dict, tensors: dict[str, TensorInfo]) -> LayerStack:
    """The language model's layer stack of one model (``hubswap.layermap.find_layer_stack``)."""
    try:
        return find_layer_stack(config, {n: t.shape for n, t in tensors.items()})
    except LayerStackError as e:
        raise IncompatibleModelsError(
            [f"{model.role} ({model.display}): {e}"],
            hint="hubswap swaps the language model's transformer layers, found as the one tensor-name "
            "prefix followed by exactly the layer numbers 0..L-1 of config.json",
        ) from None


def check_config_matches_weights(model: ModelFiles) -> None:
    """Refuse, before an engine starts on it (and fails in a traceback of its own), a model whose
    config.json does not describe its weights: the layer count and the embedding's [vocab_size,
    hidden_size], from the config and the safetensors headers only."""
    config = read_json(model, "config.json")
    if not isinstance(config, dict):
        raise ModelFilesError(f"{model.display} is not a model folder (no config.json)",
                              hint="a model folder holds config.json and its *.safetensors weights")
    tensors, problems, stack = tensor_table(model), [], None
    try:
        stack = find_layer_stack(config, {n: t.shape for n, t in tensors.items()})
    except LayerStackError as e:
        problems.append(str(e))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    embed_names = [n for n in tensors if n.endswith(("embed_tokens.weight", ".wte.weight"))]
    if stack is not None and stack.parent:
        embed_names = [n for n in embed_names if n.startswith(".".join(stack.parent))] or embed_names
    if embed_names:
        name = embed_names[0]
        rows, cols = (tuple(tensors[name].shape) + (None, None))[:2]
        for key, have in (("vocab_size", rows), ("hidden_size", cols)):
            want = text.get(key)
            if type(want) is int and have is not None and want != have:
                problems.append(f"config.json says {key} {want}, but {name} has shape {list(tensors[name].shape)}")
    if problems:
        raise ModelFilesError(f"{model.display}: config.json does not describe its weights: {'; '.join(problems)}",
                              hint="the config and the weights come from different models: take both "
                              "from the same save_pretrained or repo commit")


def _some(names: list[str], k: int = 3) -> str:
    shown = ", ".join(names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def _vocab_diff(a: dict[str, int], b: dict[str, int]) -> str:
    if len(a) != len(b):
        return f"{len(b)} tokens vs {len(a)}"
    inv_a = {i: t for t, i in a.items()}
    inv_b = {i: t for t, i in b.items()}
    diff = [i for i in sorted(inv_a) if inv_a.get(i) != inv_b.get(i)]
    if not diff:
        return "same tokens, different merges"
    i = diff[0]
    return f"{len(diff)} token ids differ, e.g. id {i}: {inv_b.get(i)!r} vs {inv_a.get(i)!r}"


# -- special tokens the merged model needs -------------------------------------------------------
# Special tokens the merged model needs, and whether the expert giving its embeddings trained them.
#
# A continued-pretraining expert (Lugha-Llama) never saw Llama 3's chat tokens, so its embedding
# and lm_head rows for ``<|eot_id|>`` and the header tokens are still the base's untrained ones.
# Taking ``non_layer`` from it while the merged model's end-of-sequence set (generation_config) or
# chat template uses those tokens gives a model that may never end a turn. Preflight warns about it
# by comparing those few rows with the base's, read as byte ranges (a ranged GET on the Hub), before
# any weight is downloaded.

EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")


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
    width = info.shape[1] * DTYPE_SIZE[info.dtype]
    lo, hi = min(ids), max(ids)
    raw = model.read_range(info.file, info.begin + lo * width, (hi - lo + 1) * width)
    a = to_float32(raw, info.dtype).reshape(hi - lo + 1, info.shape[1])
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
        if a is None or b is None or a.dtype not in FLOATS or b.dtype not in FLOATS or max(rows) >= a.shape[0]:
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
