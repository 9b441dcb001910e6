"""A synthetic MGSM in the layout of ``juletxara/mgsm``: ``en`` and the tiny world's ``sw``.

``<lang>/test.jsonl`` holds 250 word problems (``answer`` and ``equation_solution`` null, as in
MGSM's test split), ``<lang>/train.jsonl`` 8 worked exemplars that start with the language's cues
(``Question:`` / ``Step-by-Step Answer:``, ``Swali:`` / ``Jibu la Hatua kwa Hatua:``) and end
with ``The answer is N.`` / ``Jibu ni N.``, as MGSM's exemplars do. The ``sw`` split is the
``en`` split word for word in the second language, as MGSM's languages are translations of the
same 250 problems. A README declares the configs, so ``datasets.load_dataset(folder, "sw")``
loads it like the real thing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from hubswap.tinyworld import language as L

LANGS = ("en", "sw")
_CUES = {"en": "Question: ", "sw": "Swali: "}
_README = """---
configs:
{configs}
---
# Synthetic MGSM of hubswap's tiny world

Made by `hubswap.tinyworld.mgsm` (not real MGSM): {n} test problems and 8 exemplars per language,
`sw` being the tiny world's relexified English with MGSM's Swahili cues.
"""


def rows(n_test: int = 250, seed: int = 2025) -> dict[str, dict[str, list[dict]]]:
    rng = random.Random(seed)
    out = {lang: {"train": [], "test": []} for lang in LANGS}
    for _ in range(8):
        q, a, num, eq = L.problem(rng)
        ex = {"question": f"Question: {q}", "answer": f"Step-by-Step Answer: {a}",
              "answer_number": num, "equation_solution": eq}
        out["en"]["train"].append(ex)
        out["sw"]["train"].append({**ex, "question": L.relexify(ex["question"]),
                                   "answer": L.relexify(ex["answer"])})
    for _ in range(n_test):
        q, _, num, _ = L.problem(rng)
        for lang in LANGS:
            out[lang]["test"].append({"question": q if lang == "en" else L.relexify(q), "answer": None,
                                      "answer_number": num, "equation_solution": None})
    return out


def write_dataset(root: str | Path, *, n_test: int = 250, seed: int = 2025) -> Path:
    """Write the dataset folder (atomically: a complete folder or none)."""
    root = Path(root)
    if (root / "README.md").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mgsm-", dir=root.parent))
    try:
        data = rows(n_test, seed)
        configs = []
        for lang in LANGS:
            (tmp / lang).mkdir()
            for split in ("train", "test"):
                with open(tmp / lang / f"{split}.jsonl", "w", encoding="utf-8") as f:
                    for r in data[lang][split]:
                        f.write(json.dumps(r, ensure_ascii=False) + "\n")
            configs.append(f"- config_name: {lang}\n  data_files:\n  - split: train\n    path: {lang}/train.jsonl\n"
                           f"  - split: test\n    path: {lang}/test.jsonl")
        (tmp / "README.md").write_text(_README.format(configs="\n".join(configs), n=n_test), encoding="utf-8")
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / "README.md").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
