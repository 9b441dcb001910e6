#!/usr/bin/env python3
"""The mutation check: does the suite catch the bugs it claims to? (`make mutants`; issue 28.)

Each mutation below is a small, meaningful bug written by hand in a core module (the merge, the
layer map, the gate, the scorer, preflight, the records, publishing), with the tests that claim
the behaviour it breaks. For each one, in a temporary copy of the tree (never the working tree),
the mutation is applied, those tests are run, and the file is put back. A mutation the tests do
not fail "survives": the suite lets that bug through.

Why a hand-written list and not mutmut or cosmic-ray: those generate thousands of mechanical
mutants (every operator, every constant), most of them equivalent or trivial, and run the suite
for each: hours on a 2-core machine with engine tests of 20-40 s. Thirty-odd chosen bugs, each
against the few tests that should catch it, run in minutes and each result means something.

    python scripts/mutants.py              # all (about 9 minutes on 2 cores, the baseline run included)
    python scripts/mutants.py --list       # names and the tests of each
    python scripts/mutants.py NAME ...     # some

Exit status: 0 when every mutation is caught (or survives with a reason recorded in `known`),
1 when one survives unexplained, 2 when the tests fail on the unmutated tree or a mutation no
longer applies (its text is not in the file exactly once: update the list with the code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    edits: list[tuple[str, str]]  # (text that must occur exactly once, its replacement)
    tests: list[str]  # pytest node ids that claim the behaviour
    why: str  # the bug, in words
    known: str | None = None  # why it may survive (reported, not a failure)


T_DISK = "tests/test_disk_space.py::test_a_full_disk_while_writing_the_card_keeps_the_old_card"
T_STOP = "tests/test_interrupts.py::test_ctrl_c_stops_the_merge_within_a_bound"
T_MAP = "tests/test_swap.py::test_every_tensor_follows_the_layer_map"
T_GATE = "tests/test_gate.py"
T_SCORE = ["tests/test_eval_scoring.py", "tests/test_scoring_properties.py"]
T_PRE = ["tests/test_preflight.py", "tests/test_real_traits.py"]

MUTANTS = [
    # -- the nine of issue 28 -----------------------------------------------------------------
    Mutant("atomic-write-leaves-temp", "hubswap/files.py",
           [("            tmp.unlink()\n", "            pass\n")], [T_DISK],
           "a failed atomic write leaves its temporary file behind"),
    Mutant("card-readme-in-place", "hubswap/card.py",
           [("    atomic_write(readme, render_card(model_dir))\n", "    readme.write_text(render_card(model_dir))\n")],
           [T_DISK], "the card's README is written in place (a full disk truncates the old card)"),
    Mutant("ctrl-c-not-handed-on", "hubswap/swap.py",
           [("    except BaseException as e:  # handed to the main thread, which raises it\n",
             "    except Exception as e:  # handed to the main thread, which raises it\n"),
            ("    except BaseException as e:  # Ctrl-C: the workers stop after their current item\n",
             "    except Exception as e:  # Ctrl-C: the workers stop after their current item\n")],
           [T_STOP], "KeyboardInterrupt is not handed to the queue: the workers merge to the end before exit 130"),
    Mutant("publish-no-post-commit-check", "hubswap/hub/publish.py",
           [("    if bad:\n        raise HubError(f\"commit", "    if False:\n        raise HubError(f\"commit")],
           ["tests/test_hub_publish.py::test_a_hub_that_keeps_other_bytes_than_it_was_sent_is_caught_after_the_commit"],
           "what the Hub holds after the commit is not checked against the local files"),
    Mutant("records-open", "hubswap/records.py",
           [('model_config = ConfigDict(extra="forbid", frozen=True)', 'model_config = ConfigDict(extra="ignore", frozen=True)')],
           ["tests/test_records.py::test_a_record_with_an_unknown_key_is_refused_wherever_the_key_is",
            "tests/test_records.py::test_a_recipe_lock_with_an_unknown_key_is_refused",
            "tests/test_fuzz_inputs.py::test_a_lock_with_an_unknown_key_anywhere_is_refused"],
           "records accept (and drop) unknown keys"),
    Mutant("record-drops-stack-vision-modules", "hubswap/records.py",
           [('if not (k in ("stack", "vision", "modules") and v is None)', 'if k not in ("stack", "vision", "modules")')],
           ["tests/test_records.py::test_a_build_record_keeps_the_stack_vision_and_modules_it_was_given"],
           "a build record is written without its layer map's stack, vision and modules"),
    Mutant("sweep-tie-config-order", "hubswap/sweeps.py",
           [("                                             c.bottom + c.top + 2 * c.transition, c))",
             "                                             c))")],
           ["tests/test_sweep.py::test_a_tie_goes_to_the_smaller_swap_even_when_it_comes_later_in_config_order",
            "tests/test_sweep.py::test_rank_ties_go_to_the_smaller_swap"],
           "a tie goes to the first configuration in Config order, not the smaller swap"),
    Mutant("one-part-prefix-lost", "hubswap/layermap.py",
           [("                if k:\n", "                if k > 1:\n")],
           ["tests/test_layer_stack.py::test_a_one_part_prefix_is_a_stack_too"],
           "one-part layer prefixes (layers.0....) are not found"),
    Mutant("hash-cache-never-answers", "hubswap/hashing.py",
           [("        cache = _load()\n        if key in cache:\n            return cache[key]\n", "        cache = _load()\n")],
           ["tests/test_lock_inputs.py::test_hash_cache_answers_for_an_unchanged_file_and_rehashes_an_edited_one",
            "tests/test_swap.py::test_first_build_hashes_local_inputs_once_and_says_so"],
           "every file is re-hashed: the cache is written but never read"),
    Mutant("top-region-label", "hubswap/layermap.py",
           [("        elif i >= n - u:\n", "        elif i > n - u:\n")],
           [T_MAP, "tests/test_card.py::test_card_matches_golden_file"],
           "the lowest top layer is labelled transition-top (weight 1) in lock.json and the card"),
    # -- the merge --------------------------------------------------------------------------
    Mutant("queue-ignores-failure", "hubswap/swap.py",
           [("            if self.error is not None:\n                return None\n            first, second",
             "            first, second")],
           [T_STOP, "tests/test_swap.py::test_a_truncated_input_fails_the_pool_cleanly"],
           "after a failure or Ctrl-C the workers keep taking work"),
    Mutant("merge-no-write-back", "hubswap/swap.py",
           [("        syncer = WriteBack(fds) if durable else None\n", "        syncer = None\n")],
           ["tests/test_durable.py"], "shards are not sent to the disk while they are written"),
    Mutant("copies-joined-without-dst-check", "hubswap/swap.py",
           [("                        and last.src_off + last.count == s.info.begin and last.dst_off + last.count == offset):",
             "                        and last.src_off + last.count == s.info.begin):")],
           [T_MAP, "tests/test_swap.py::test_worker_pool_is_bit_exact_with_mixed_expert_dtypes"],
           "adjacent source ranges are joined into one copy even when their outputs are not adjacent",
           known="equivalent while both experts' files list tensors in the output's (name-sorted) order, as "
                 "safetensors writers do: two raw copies adjacent in one source file are then adjacent in the "
                 "output too; the check guards a file that orders its tensors otherwise, which no test has"),
    Mutant("pipeline-hashes-all-on-ctrl-c", "hubswap/pipeline.py",
           [("                pool.shutdown(wait=True, cancel_futures=True)\n", "                pool.shutdown(wait=True)\n")],
           [T_STOP], "after Ctrl-C the build hashes every input file before it exits",
           known="timing only: the test bounds the bytes written after the signal, not read, and its time "
                 "bound is loose (30 s); on the 177 MB test experts the rest of the hashing is about a second, "
                 "on an 8B model tens of seconds"),
    # -- the layer map ------------------------------------------------------------------------
    Mutant("transition-bottom-weight", "hubswap/layermap.py",
           [('w, region = 1 - Fraction(i - b + 1, tb + 1), "transition-bottom"',
             'w, region = 1 - Fraction(i - b, tb + 1), "transition-bottom"')],
           [T_MAP], "the bottom transition's blend weights are off by one step"),
    Mutant("transition-top-weight", "hubswap/layermap.py",
           [("Fraction(i - (n - u - tu) + 1, tu + 1)", "Fraction(i - (n - u - tu) + 1, tu + 2)")],
           [T_MAP], "the top transition's blend weights are wrong"),
    Mutant("non-layer-always-language", "hubswap/layermap.py",
           [('nl = LayerSource(-1, whole[swap.non_layer], "non-layer")', 'nl = LayerSource(-1, whole["language"], "non-layer")')],
           [T_MAP], "non_layer = \"task\" is ignored: embeddings, norm and head always come from the language expert"),
    Mutant("stack-ignores-embeddings", "hubswap/layermap.py",
           [("        candidates = beside if len(beside) == 1 else candidates\n", "        candidates = candidates\n")],
           ["tests/test_layer_stack.py"], "two equally deep stacks are not told apart by the token embeddings"),
    Mutant("stack-index-past-the-end", "hubswap/layermap.py",
           [("        return int(i) if int(i) < self.num_layers else None\n", "        return int(i)\n")],
           ["tests/test_layer_stack.py"], "a tensor numbered past the last layer counts as a layer"),
    # -- the gate ---------------------------------------------------------------------------
    Mutant("gate-float-tie", "hubswap/evaluate/gate.py",
           [("    return round(acc - bound, 9) >= 0\n", "    return acc - bound >= 0\n")],
           [T_GATE], "an exact tie plus a margin fails by a float rounding error"),
    Mutant("gate-ignores-margin", "hubswap/evaluate/gate.py",
           [("        ok = _at_least(acc, other_acc + gate.margin)\n", "        ok = _at_least(acc, other_acc)\n")],
           [T_GATE], "the margin is not applied"),
    Mutant("gate-unevaluated-passes", "hubswap/evaluate/gate.py",
           [("            checks.append(msg)\n            reasons.append(msg)\n            continue\n",
             "            checks.append(msg)\n            continue\n")],
           [T_GATE], "a must_beat model that was not evaluated does not fail the gate"),
    Mutant("gate-no-min-accuracy", "hubswap/evaluate/gate.py",
           [("    checks.append(msg)\n    if not ok:\n        reasons.append(msg)\n    share = ", "    checks.append(msg)\n    share = ")],
           [T_GATE], "min_accuracy is reported but never fails the gate"),
    # -- scoring ----------------------------------------------------------------------------
    Mutant("score-any-3-digit-tail-is-thousands", "hubswap/evaluate/scoring.py",
           [("if groups_thousands and len(tail) == 3 and 1 <= len(head) <= 3 and head.strip(\"0\"):",
             "if groups_thousands and len(tail) == 3:")],
           T_SCORE, "0,500 and 1234,567 read as thousands groups"),
    Mutant("score-no-dot-thousands", "hubswap/evaluate/scoring.py",
           [("        groups_thousands = sep == \",\" or lang in _DOT_THOUSANDS\n", "        groups_thousands = sep == \",\"\n")],
           T_SCORE, "1.000 in German, Spanish... reads as one"),
    Mutant("score-first-phrase-wins", "hubswap/evaluate/scoring.py",
           [("    for phrase in reversed(list(_phrase_regex(code).finditer(norm))):",
             "    for phrase in list(_phrase_regex(code).finditer(norm)):")],
           T_SCORE, "the first answer phrase wins instead of the last"),
    Mutant("score-phrase-across-lines", "hubswap/evaluate/scoring.py",
           [(' and "\\n" not in norm[end:m.start()]:', ":")],
           T_SCORE, "a number on a later line counts as the answer phrase's"),
    Mutant("score-drops-sign", "hubswap/evaluate/scoring.py",
           [("    return -value if negative else value\n", "    return value\n")],
           T_SCORE, "-18 reads as 18"),
    Mutant("score-no-native-digits", "hubswap/evaluate/scoring.py",
           [("        elif ch.isdecimal() and not ch.isascii():\n", "        elif False:\n")],
           T_SCORE, "Bengali, Thai... digits are not read"),
    # -- preflight --------------------------------------------------------------------------
    Mutant("preflight-config-differences-warn", "hubswap/preflight.py",
           [("                (warnings if key in SOFT_KEYS else problems).append(", "                warnings.append(")],
           T_PRE, "a structural config difference (head_dim, layers...) is only a warning"),
    Mutant("preflight-no-shape-check", "hubswap/preflight.py",
           [("            if other is not None and other.shape != info.shape:\n", "            if False:\n")],
           T_PRE, "tensors of different shapes are not refused"),
    Mutant("preflight-no-vocab-check", "hubswap/preflight.py",
           [("        if v[0] != vocabs[ref_role][0]:\n", "        if False:\n")],
           T_PRE, "a different tokenizer vocabulary is not refused"),
    Mutant("preflight-layer-map-blends-allowed", "hubswap/preflight.py",
           [("lmap.for_tensor(n).weight != 0]", "lmap.for_tensor(n).weight == 1]")],
           ["tests/test_real_traits.py"], "a tensor the language expert lacks may be blended from it"),
    # -- records ----------------------------------------------------------------------------
    Mutant("records-no-version-check", "hubswap/records.py",
           [("    if data.get(version_key) != version:\n", "    if False:\n")],
           ["tests/test_records.py"], "a record of another version is read (or refused without saying why)"),
    Mutant("records-path-escape", "hubswap/records.py",
           [(' or ".." in name.split("/")', "")],
           ["tests/test_fuzz_inputs.py::test_build_refuses_a_corrupt_lock_in_one_line"],
           "a lock may name a file outside the model folder (../../etc/passwd)"),
    Mutant("recipe-open", "hubswap/recipe.py",
           [('model_config = ConfigDict(extra="forbid", strict=True, frozen=True)',
             'model_config = ConfigDict(extra="ignore", strict=True, frozen=True)')],
           ["tests/test_fuzz_inputs.py::test_an_unknown_recipe_key_is_refused_naming_it", "tests/test_recipe.py"],
           "a recipe with a misspelt key is accepted"),
    # -- publishing -------------------------------------------------------------------------
    Mutant("publish-ignores-gate", "hubswap/hub/publish.py",
           [("    if gate is not None and not gate.passed:\n", "    if False:\n")],
           ["tests/test_hub_publish.py::test_a_build_that_failed_its_gate_is_not_published"],
           "a build that failed its gate is published"),
    Mutant("publish-replaces-other-inputs", "hubswap/hub/publish.py",
           [('    if theirs["recipe"] != mine["recipe"] or theirs["inputs"] != mine["inputs"]:\n',
             '    if theirs["recipe"] != mine["recipe"]:\n')],
           ["tests/test_hub_publish.py::test_push_over_another_recipes_build_is_refused_unless_forced"],
           "a build of the same recipe from other inputs silently replaces the published one"),
    Mutant("publish-lfs-hash-unchecked", "hubswap/hub/publish.py",
           [("            if s.lfs.sha256 != f.sha256 or s.lfs.size != f.size:\n", "            if s.lfs.size != f.size:\n")],
           ["tests/test_hub_publish.py"], "an LFS file (the weights) of the right size but other bytes passes the check"),
    Mutant("publish-keeps-stale-records", "hubswap/hub/publish.py",
           [(' or name.startswith("hubswap/")', "")],
           ["tests/test_hub_publish.py::test_same_build_with_a_new_card_is_updated_in_one_commit",
            "tests/test_hub_publish.py::test_a_repo_not_made_by_hubswap_is_never_overwritten_without_force"],
           "an older build's hubswap/ records are kept beside the new build's"),
]


def copy_tree(dest: Path) -> Path:
    """The checkout's files (tracked, and untracked ones git does not ignore) under ``dest/tree``,
    with ``dest/shared`` pointing at the checkout's ../shared (the MGSM copy the tests read)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    tree = dest / "tree"
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / rel)
    if (REPO.parent / "shared").exists():
        (dest / "shared").symlink_to(REPO.parent / "shared")
    return tree


def run_tests(tree: Path, tests: list[str], timeout: float, *, first_failure: bool = True) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    env.pop("CI", None)  # a skip here is reported as such, not turned into a failure
    start = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", *(["-x"] if first_failure else []), "-q", "-p",
                            "no:cacheprovider", *tests], cwd=tree,
                           env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, time.monotonic() - start, "timed out"
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    failed += [line.strip() for line in r.stdout.splitlines() if line.startswith("E ")][:1]
    tail = lines[-1:] or [r.stderr.strip()[-200:]]
    return r.returncode, time.monotonic() - start, "; ".join([*failed, tail[0]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests")
    ap.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unmutated tree")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutation (default 900)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.names and len(chosen) != len(set(args.names)):
        ap.error(f"unknown mutation(s): {sorted(set(args.names) - {m.name for m in MUTANTS})}")
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.path}): {m.why}\n    " + "\n    ".join(m.tests))
        return 0

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubswap-mutants-") as tmp:
        tree = copy_tree(Path(tmp))
        stale = []
        for m in chosen:
            text = (tree / m.path).read_text(encoding="utf-8")
            stale += [f"{m.name}: {m.path} holds {text.count(old)}x {old!r}" for old, _ in m.edits if text.count(old) != 1]
        if stale:
            print("mutations that no longer apply (update scripts/mutants.py):\n  " + "\n  ".join(stale))
            return 2
        if not args.no_baseline:
            tests = list(dict.fromkeys(t for m in chosen for t in m.tests))
            rc, took, tail = run_tests(tree, tests, args.timeout * 2, first_failure=False)
            print(f"baseline (unmutated, {len(tests)} test ids): {tail} [{took:.0f} s]", flush=True)
            if rc != 0:
                print("the tests fail on the unmutated tree: fix that first")
                return 2
        results = []
        for m in chosen:
            target = tree / m.path
            pristine = target.read_text(encoding="utf-8")
            mutated = pristine
            for old, new in m.edits:
                mutated = mutated.replace(old, new, 1)
            target.write_text(mutated, encoding="utf-8")
            try:
                rc, took, tail = run_tests(tree, m.tests, args.timeout)
            finally:
                target.write_text(pristine, encoding="utf-8")
            verdict = {0: "SURVIVED", 1: "killed"}.get(rc, f"error (pytest exit {rc})")
            if rc == 0 and m.known:
                verdict = "survived (known)"
            results.append((m, verdict))
            print(f"{verdict:18} {m.name:38} {took:5.0f} s  {tail}", flush=True)

    killed = sum(v == "killed" for _, v in results)
    print(f"\n{killed}/{len(results)} mutations caught in {time.monotonic() - started:.0f} s")
    for m, v in results:
        if v != "killed":
            print(f"  {v}: {m.name} ({m.path}): {m.why}" + (f"\n      known: {m.known}" if m.known else ""))
    return 1 if any(v == "SURVIVED" or v.startswith("error") for _, v in results) else 0


if __name__ == "__main__":
    sys.exit(main())
