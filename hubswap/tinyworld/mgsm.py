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

import os
import random
import shutil
import tempfile
from pathlib import Path

from hubswap.evaluate.data import write_local
from hubswap.tinyworld import language as L

LANGS = ("en", "sw")
_CUES = {"en": "Question: ", "sw": "Swali: "}
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
        write_local(tmp, rows(n_test, seed), title=f"Synthetic MGSM of hubswap's tiny world ({n_test} test "
                    "problems and 8 exemplars per language; sw is the relexified English with MGSM's Swahili cues)")
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / "README.md").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
