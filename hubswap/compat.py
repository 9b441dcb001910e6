"""Compatibility preflight: can these experts (and their base) be layer-swapped?

Everything here reads only config.json, tokenizer files, the safetensors index and the
safetensors *headers*, never a weight. The same checks run on local folders and, through
``hubswap.hub``, on Hub repos before anything large is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hubswap.errors import IncompatibleModelsError, ModelFilesError, UnsafeWeightsError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)
# Files taken from the `files_from` expert besides the weights.
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
# Config keys that fix the shapes and the computation of a transformer stack.
STRUCTURAL_KEYS = (
    "model_type", "architectures", "num_hidden_layers", "hidden_size", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
    "hidden_act", "rope_theta", "rms_norm_eps", "attention_bias", "mlp_bias", "max_position_embeddings",
)
# Keys whose difference is reported but tolerated (fine-tunes legitimately change them).
SOFT_KEYS = ("rope_theta", "rms_norm_eps", "max_position_embeddings", "rope_scaling")
_MAX_HEADER = 100 << 20


class ModelFiles(Protocol):
    """Read-only access to one model's small files, wherever they live."""

    role: str
    display: str

    def files(self) -> list[str]: ...
    def read_text(self, name: str) -> str | None: ...
    def safetensors_header(self, name: str) -> dict: ...


def parse_header(head: bytes, *, where: str) -> dict:
    """Decode a safetensors header from its first bytes (8-byte little-endian length + JSON).

    Written by hand because the safetensors library exposes tensors, not their byte offsets,
    and the merge copies raw byte ranges without building tensors.
    """
    if len(head) < 8:
        raise ModelFilesError(f"{where}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER or len(head) < 8 + n:
        raise ModelFilesError(f"{where}: corrupt safetensors header (length {n})")
    try:
        header = json.loads(head[8 : 8 + n])
    except ValueError as e:
        raise ModelFilesError(f"{where}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    return {"__data_start__": 8 + n, **header}


def read_header_file(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            head += f.read(min(n, _MAX_HEADER + 1))
    return parse_header(head, where=str(path))


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
        start = header.pop("__data_start__")
        for name, meta in header.items():
            if name in table:
                raise ModelFilesError(f"{model.role} model {model.display}: tensor {name} is stored twice")
            b, e = meta["data_offsets"]
            table[name] = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), f, start + b, start + e)
    return table


def vocabulary_fingerprint(model: ModelFiles) -> tuple[str, dict[str, int]] | None:
    """(sha256, token->id) of the tokenizer's vocabulary, or ``None`` when it has no tokenizer files."""
    tok = read_json(model, "tokenizer.json")
    if tok is not None:
        vocab = dict((tok.get("model") or {}).get("vocab") or {})
        for t in tok.get("added_tokens") or []:
            vocab.setdefault(t["content"], t["id"])
        blob = json.dumps([sorted(vocab.items()), (tok.get("model") or {}).get("merges")], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest(), vocab
    raw = model.read_text("vocab.json")
    if raw is not None:
        vocab = json.loads(raw)
        return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest(), vocab
    return None


@dataclass(frozen=True)
class Preflight:
    """What the checks established: the shared layer count, tensors and per-model tables."""

    num_layers: int
    tensors: dict[str, dict[str, TensorInfo]]  # role -> name -> info
    configs: dict[str, dict]
    warnings: tuple[str, ...] = ()


def check_compatible(models: dict[str, ModelFiles]) -> Preflight:
    """Check every model against the task expert; raise ``IncompatibleModelsError`` listing all mismatches."""
    ref_role = "task"
    problems: list[str] = []
    warnings: list[str] = []
    configs: dict[str, dict] = {}
    for role, m in models.items():
        cfg = read_json(m, "config.json")
        if cfg is None:
            problems.append(f"{role} ({m.display}): no config.json")
        else:
            configs[role] = cfg
    if problems:
        raise IncompatibleModelsError(problems)

    ref = configs[ref_role]
    for role, cfg in configs.items():
        if role == ref_role:
            continue
        who = f"{role} ({models[role].display}) vs task ({models[ref_role].display})"
        for key in STRUCTURAL_KEYS:
            a, b = ref.get(key), cfg.get(key)
            if a != b:
                (warnings if key in SOFT_KEYS else problems).append(f"{who}: config.json {key}: {b!r} != {a!r}")

    tensors = {role: tensor_table(m) for role, m in models.items()}
    ref_t = tensors[ref_role]
    for role, table in tensors.items():
        if role == ref_role:
            continue
        who = f"{role} ({models[role].display}) vs task"
        missing = [n for n in ref_t if n not in table]
        extra = [n for n in table if n not in ref_t]
        if missing:
            problems.append(f"{who}: {len(missing)} tensor(s) missing: {_some(missing)}")
        if extra:
            problems.append(f"{who}: {len(extra)} extra tensor(s): {_some(extra)}")
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
    layers = ref.get("num_hidden_layers")
    if not isinstance(layers, int) or layers <= 0:
        raise IncompatibleModelsError([f"task ({models[ref_role].display}): config.json has no num_hidden_layers"])
    return Preflight(layers, tensors, configs, tuple(warnings))


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
