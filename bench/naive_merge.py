"""The naive layer swap a user writes with transformers: load both experts, edit a state dict, save.

    python bench/naive_merge.py TASK LANGUAGE OUT --bottom 5 --top 2 --transition 1

Same semantics as the hubswap recipe of the benchmark (docs/DESIGN.md, "Layer map"): bottom and
top layers and every non-layer tensor from the language expert, the middle from the task expert,
transition layers blended ``w*lang + (1-w)*task`` in float32 and cast once to bfloat16. It does not
import hubswap: this is the script people write without it.
"""

from __future__ import annotations

import argparse
import re

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def language_weight(i: int, n: int, bottom: int, top: int, tb: int, tu: int) -> float:
    if i < bottom or i >= n - top:
        return 1.0
    if i < bottom + tb:
        return 1 - (i - bottom + 1) / (tb + 1)
    if i >= n - top - tu:
        return (i - (n - top - tu) + 1) / (tu + 1)
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("language")
    p.add_argument("out")
    p.add_argument("--bottom", type=int, required=True)
    p.add_argument("--top", type=int, required=True)
    p.add_argument("--transition", type=int, default=0)
    a = p.parse_args()

    task = AutoModelForCausalLM.from_pretrained(a.task, dtype=torch.bfloat16)
    # In its own dtype: a float32 expert is blended from its float32 values, cast once on copy_.
    lang = AutoModelForCausalLM.from_pretrained(a.language, dtype="auto")
    n = task.config.num_hidden_layers
    lang_state = lang.state_dict()
    with torch.no_grad():
        for name, t in task.state_dict().items():
            m = re.search(r"\blayers\.(\d+)\.", name)
            w = 1.0 if m is None else language_weight(int(m.group(1)), n, a.bottom, a.top,
                                                      a.transition, a.transition)
            if w == 1.0:
                t.copy_(lang_state[name])
            elif w > 0.0:
                t.copy_((w * lang_state[name].float() + (1 - w) * t.float()).to(t.dtype))
    del lang, lang_state
    task.save_pretrained(a.out)
    AutoTokenizer.from_pretrained(a.task).save_pretrained(a.out)


if __name__ == "__main__":
    main()
