"""Choose the recipes a build-model run builds, as a GitHub Actions matrix.

    workflow_dispatch: the one recipe named by the `recipe` input;
    push to main:      every recipes/*.toml that the push added, changed or renamed, and every
                       recipe whose lock file (recipes/<name>.lock.json, `hubswap lock`) changed.

The workflow passes its inputs in environment variables (EVENT, RECIPE, BEFORE, AFTER), never by
`${{ }}` inside a script, and every name must be an existing file directly under recipes/ ending
in .toml, so a crafted input can neither inject a command nor point outside recipes/. Writes
`matrix={"include": [{"recipe": "recipes/x.toml", "name": "x"}, ...]}` and `count=N` to
$GITHUB_OUTPUT (stdout when unset). Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

RECIPE = re.compile(r"^recipes/([A-Za-z0-9][A-Za-z0-9._-]{0,99})\.toml$")
LOCK = re.compile(r"^recipes/([A-Za-z0-9][A-Za-z0-9._-]{0,99})\.lock\.json$")
SHA = re.compile(r"^[0-9a-f]{40}$")


class SelectionError(ValueError):
    pass


def check_recipe(path: str, root: Path) -> dict[str, str]:
    """{"recipe": path, "name": stem} for a recipe file directly under recipes/, else an error."""
    m = RECIPE.match(path)
    if not m or ".." in path:
        raise SelectionError(f"{path!r} is not a recipe path: expected recipes/<name>.toml")
    full = root / path
    if full.is_symlink() or not full.is_file():
        raise SelectionError(f"{path} is not a file in this commit")
    return {"recipe": path, "name": m.group(1)}


def _git(root: Path, *args: str) -> list[str]:
    out = subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def changed_recipes(root: Path, before: str, after: str) -> list[str]:
    """Recipes added, modified or renamed between two commits, or whose lock file changed.

    Deleted recipes build nothing; a changed lock file builds its recipe if that still exists.
    """
    if not SHA.match(after):
        raise SelectionError(f"AFTER {after!r} is not a commit SHA")
    known = SHA.match(before) and before != "0" * 40
    if known:
        try:
            _git(root, "cat-file", "-e", f"{before}^{{commit}}")
        except subprocess.CalledProcessError:
            known = False  # a force push: the old head is gone, fall back to the new head commit
    if known:
        names = _git(root, "diff", "--name-only", "--diff-filter=AMR", before, after, "--", "recipes/")
    else:
        names = _git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", "--root",
                     "--diff-filter=AMR", after, "--", "recipes/")
    chosen = {n for n in names if RECIPE.match(n)}
    for n in names:
        if (m := LOCK.match(n)) and (root / f"recipes/{m.group(1)}.toml").is_file():
            chosen.add(f"recipes/{m.group(1)}.toml")
    return sorted(chosen)


def select(env: dict[str, str], root: Path) -> list[dict[str, str]]:
    event = env.get("EVENT", "")
    if event == "workflow_dispatch":
        return [check_recipe(env.get("RECIPE", "").strip(), root)]
    if event == "push":
        return [check_recipe(p, root) for p in changed_recipes(root, env.get("BEFORE", ""), env.get("AFTER", ""))]
    raise SelectionError(f"build-model does not run on {event!r} events")


def main() -> int:
    root = Path.cwd()
    try:
        chosen = select(dict(os.environ), root)
    except (SelectionError, subprocess.CalledProcessError) as e:
        print(f"::error title=build-model::{e}", file=sys.stderr)
        return 1
    lines = f"matrix={json.dumps({'include': chosen}, separators=(',', ':'))}\ncount={len(chosen)}\n"
    target = os.environ.get("GITHUB_OUTPUT")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(lines)
    else:
        sys.stdout.write(lines)
    for c in chosen:
        print(f"will build {c['recipe']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
