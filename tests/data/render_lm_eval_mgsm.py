"""Regenerate lmeval_0.4.13_mgsm.json: what lm-evaluation-harness 0.4.13 itself renders and scores.

Not part of the test run (lm_eval is not a dependency). Run it in a throwaway venv that has
``lm_eval==0.4.13`` whose mgsm ``dataset_path`` points at the local MGSM copy:

    python tests/data/render_lm_eval_mgsm.py ../shared/mgsm tests/data/lmeval_0.4.13_mgsm.json

Only hashes, lengths, exemplar orders and verdicts are stored: MGSM text is never committed.
"""

import hashlib
import json
import logging
import sys
from pathlib import Path

logging.disable(logging.WARNING)

from lm_eval.api.metrics import exact_match_hf_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

LANGS = "bn de en es fr ja ru sw te th zh".split()
TASKS = {"native-cot": "mgsm_native_cot_{}", "en-cot": "mgsm_en_cot_{}", "direct": "mgsm_direct_{}"}
SHOTS, DOCS = (8, 2, 0), 3


def main(mgsm: str, out: str) -> None:
    train = {lang: [json.loads(x)["question"] for x in open(Path(mgsm) / lang / "train.jsonl", encoding="utf-8")]
             for lang in LANGS}
    tm = TaskManager()
    prompts, filters = {}, {}
    for mode, pattern in TASKS.items():
        for lang in LANGS:
            for k in SHOTS:
                task = list(tm.load_task_or_group([pattern.format(lang)]).values())[0]
                task.set_config(key="num_fewshot", value=k)
                task.set_fewshot_seed(1234)
                task.build_all_requests(limit=DOCS, rank=0, world_size=1)
                rows = []
                for inst in sorted(task.instances, key=lambda i: i.doc_id):
                    ctx, gen = inst.args
                    order = sorted(range(len(train[lang])), key=lambda i: ctx.find(train[lang][i] + "\n"))
                    order = [i for i in order if ctx.find(train[lang][i] + "\n") >= 0]
                    rows.append({"doc": inst.doc_id, "sha256": hashlib.sha256(ctx.encode()).hexdigest(),
                                 "chars": len(ctx), "until": gen["until"], "exemplars": order})
                prompts[f"{mode}/{lang}/{k}"] = rows
            if lang == "sw":
                filters[mode] = [
                    {"name": f.name, "steps": [type(make_step()).__name__ for make_step in f.filters]}
                    for f in task._filters
                ]
    cases = json.load(open(Path(__file__).with_name("scorer_cases.json"), encoding="utf-8"))
    verdicts = []
    for case in cases:
        task = list(tm.load_task_or_group([TASKS[case["mode"]].format(case["lang"])]).values())[0]
        out_case = {}
        for f in task._filters:
            resps = [[case["text"]]]
            for make_step in f.filters:  # each is a factory of the filter object
                resps = list(make_step().apply(resps, [None]))
            pred = resps[0]  # take_first already unwrapped the one response
            em = exact_match_hf_evaluate([pred], [str(case["gold"])], ignore_case=True, ignore_punctuation=True)
            out_case[f.name] = {"extracted": pred, "exact_match": bool(em["exact_match"])}
        verdicts.append(out_case)
    json.dump({"lm_eval": "0.4.13", "fewshot_seed": 1234, "prompts": prompts, "filters": filters,
               "scorer_verdicts": verdicts}, open(out, "w", encoding="utf-8"), ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
