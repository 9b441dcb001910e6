#!/usr/bin/env python3
"""MGSM as the tests and offline builds read it: a folder in the layout of ``juletxara/mgsm``.

    python scripts/mgsm.py fetch ../shared/mgsm     # from the Hub (HF_ENDPOINT honoured), then check
    python scripts/mgsm.py check ../shared/mgsm     # 250 test questions and 8 cued exemplars per language

``fetch`` reads every language through hubswap's own loader (``hubswap.evaluate.data``), so a Hub
repo that still holds the old loading script is read from its parquet conversion
(``refs/convert/parquet``) exactly as a build would, and writes ``<lang>/test.jsonl``,
``<lang>/train.jsonl`` and a README declaring one config per language, which
``datasets.load_dataset(folder, lang)`` reads back. ``check`` loads the folder with the same loader
and fails (exit 1) unless each language has 250 test questions and 8 exemplars that keep MGSM's
question and step-by-step cues: lm-eval cuts those cues off by length, so a copy that lost them
would garble every few-shot prompt without an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hubswap.errors import HubswapError
from hubswap.evaluate.data import HUB_DATASET, load_language, load_splits, write_local
from hubswap.evaluate.languages import LANGUAGES

TEST_QUESTIONS, EXEMPLARS = 250, 8


def fetch(dest: Path, dataset: str, revision: str, langs: list[str]) -> None:
    splits = {}
    for lang in langs:
        ds, source, rev = load_splits(dataset, lang, revision=revision)
        splits[lang] = {split: ds[split].to_list() for split in ("train", "test")}
        print(f"{lang}: {len(ds['test'])} test, {len(ds['train'])} train from {source}@{rev}")
    write_local(dest, splits, title=f"MGSM (copy of {dataset} by hubswap's scripts/mgsm.py)")


def check(folder: Path, langs: list[str]) -> list[str]:
    problems = []
    for lang in langs:
        try:
            data = load_language(folder, lang)
        except HubswapError as e:
            problems.append(str(e))
            continue
        if (len(data.test), len(data.train)) != (TEST_QUESTIONS, EXEMPLARS):
            problems.append(f"{lang}: {len(data.test)} test questions and {len(data.train)} exemplars "
                            f"(expected {TEST_QUESTIONS} and {EXEMPLARS})")
        else:
            print(f"{lang}: {TEST_QUESTIONS} test questions, {EXEMPLARS} exemplars with their cues")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="copy MGSM from the Hub into FOLDER, then check it")
    f.add_argument("folder", type=Path)
    f.add_argument("--dataset", default=HUB_DATASET)
    f.add_argument("--revision", default="main")
    c = sub.add_parser("check", help="check a folder in the layout of juletxara/mgsm")
    c.add_argument("folder", type=Path)
    for p in (f, c):
        p.add_argument("--languages", nargs="+", default=list(LANGUAGES), metavar="LANG")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch(args.folder, args.dataset, args.revision, args.languages)
        problems = check(args.folder, args.languages)
    except HubswapError as e:
        problems = [str(e)]
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
