"""Merge variants of a trained v3 design (diagnostic): which parts of the language expert help or hurt.

    PYTHONPATH=. python experiments/tiny_v3_merges.py C task language [--n 100]
"""
import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_v3 as T  # noqa: E402

from hubswap.tinyworld.train import make_tokenizer, model_config  # noqa: E402

# name -> (layers from language, non-layer tensors from language)
VARIANTS = {
    "L01+L67, nonlayer=lang": ({0, 1, 6, 7}, {"embed", "norm", "head"}),
    "L01+L67, nonlayer=task": ({0, 1, 6, 7}, set()),
    "L01+embed (bottom side only)": ({0, 1}, {"embed"}),
    "L0+embed": ({0}, {"embed"}),
    "embed only": (set(), {"embed"}),
}


def part(k):
    m = re.match(r"model\.layers\.(\d+)\.", k)
    if m:
        return int(m.group(1))
    return "embed" if "embed_tokens" in k else "head" if "lm_head" in k else "norm"


def main():
    from transformers import LlamaForCausalLM
    ap = argparse.ArgumentParser()
    ap.add_argument("design")
    ap.add_argument("task")
    ap.add_argument("language")
    ap.add_argument("--n", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = T.DESIGNS[a.design]
    tok = make_tokenizer(None, d.vocab_size, scheme=d.tokenizer)
    cfg = model_config(d, len(tok))
    sd = {r: torch.load(T.OUT / f"{name}-{T.key_of(d, name)}.pt")["state"]
          for r, name in (("task", a.task), ("language", a.language))}
    for v, (layers, nonlayer) in VARIANTS.items():
        out = {k: (sd["language"] if (part(k) in layers or part(k) in nonlayer) else sd["task"])[k] for k in sd["task"]}
        m = LlamaForCausalLM(cfg)
        m.load_state_dict(out)
        m.eval()
        acc = {lang: T.evaluate(m, tok, lang, a.n, show=0) for lang in ("sw", "en")}
        print(f"{v:32s} sw {acc['sw']:.2f}  en {acc['en']:.2f}", flush=True)


main()
