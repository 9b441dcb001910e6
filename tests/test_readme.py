"""The documentation against the code: README.md, CONTRIBUTING.md and docs/*.md link only to files and
headings that exist, and every command the README shows works as written: `make` targets exist,
`hubswap` lines parse with the real CLI parser and name recipes that validate, `pip install` names
extras pyproject.toml declares, the flagship recipe is shown as it is, and the exit-code table is
hubswap/errors.py's. Fast: no torch, no vLLM, no network.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from hubswap import cli, errors

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
# The README is also shown on a package index, so it links into this repository absolutely.
OWN = re.compile(r"https://(?:github\.com/hubswap/hubswap/blob|raw\.githubusercontent\.com/hubswap/hubswap)/main/")
# A move another branch is making: the link is right once it lands, and the text exists meanwhile.
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The text outside fenced code blocks, where links are links."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text.replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(_text(path)), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    prose = _prose(_text(path))
    return re.findall(r"\]\(([^)\s]+)\)", prose) + re.findall(r'src="([^"]+)"', prose)


def _resolve(page: Path, target: str) -> tuple[Path, str] | None:
    """The file and anchor a link names in this repository, or None for a link elsewhere."""
    if target.startswith(("http://", "https://", "mailto:")):
        if not (m := OWN.match(target)):
            return None
        target = target[m.end():]
        base = REPO
    else:
        base = page.parent
    file, _, anchor = target.partition("#")
    return (base / file if file else page).resolve(), anchor


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_name_files_and_headings_that_exist(page):
    broken = []
    for target in links(page):
        if (where := _resolve(page, target)) is None:
            continue
        file, anchor = where
        rel = file.relative_to(REPO).as_posix() if file.is_relative_to(REPO) else str(file)
        if not file.exists():
            broken.append(f"{target}: no file {rel}")
        elif anchor and file.suffix == ".md" and file.exists() and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {rel}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_links_are_absolute():
    relative = [t for t in links(README) if not t.startswith(("https://", "http://", "#", "mailto:"))]
    assert relative == [], "the README is shown on a package index: link with https://github.com/hubswap/hubswap/blob/main/..."
    # tests/test_package.py checks these links as paths, so an anchor after them reads as a missing file
    assert [t for t in links(README) if OWN.match(t) and "#" in t] == []


def test_slug_follows_githubs_rules():
    assert slug("Errors and exit codes") == "errors-and-exit-codes"
    assert slug("The build's output") == "the-builds-output"
    assert slug("`scripts/install.sh`") == "scriptsinstallsh"
    assert slug("What is tested of the workflows, and what is not") == "what-is-tested-of-the-workflows-and-what-is-not"


# --- the README's commands -----------------------------------------------------------------------


def blocks(text: str, *langs: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang in langs]


def commands(text: str) -> list[str]:
    """Every command of the README's bash blocks, continuation lines joined, comments dropped."""
    out = []
    for body in blocks(text, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" # ", 1)[0].split("   #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_is_a_page_not_a_manual():
    assert len(_text(README).splitlines()) < 260


def test_quick_start_is_exactly_two_commands():
    quick = section(_text(README), "Quick start")
    first = FENCE.search(quick)
    assert first and first.group(1) == "bash"
    lines = [ln for ln in first.group(2).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert [ln.split("#")[0].strip() for ln in lines] == ["make demo", "make test"]


def test_every_readme_command_is_one_we_check():
    kinds = ("make ", "hubswap ", "pip install ", "export ")
    unknown = [c for c in commands(_text(README)) if not c.startswith(kinds)]
    assert unknown == [], "teach tests/test_readme.py to check these"


def test_make_targets_exist():
    makefile = _text(REPO / "Makefile")
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    named = {c.split()[1] for c in commands(_text(README)) if c.startswith("make ")}
    assert named and named <= targets, named - targets


def _hubswap_lines() -> list[list[str]]:
    return [shlex.split(c)[1:] for c in commands(_text(README)) if c.startswith("hubswap ")]


def test_hubswap_commands_parse_with_the_real_cli():
    lines = _hubswap_lines()
    assert lines
    for argv in lines:
        args = cli._parser().parse_args(argv)  # argparse exits (SystemExit 2) on anything it rejects
        assert args.command == argv[0]


def test_recipes_the_readme_names_exist_and_validate(capsys):
    recipes = {a for argv in _hubswap_lines() for a in argv if a.endswith(".toml")}
    recipes |= set(re.findall(r"\brecipes/[\w.-]+\.toml\b", _text(README)))
    assert "recipes/llama-swahili-math.toml" in recipes
    for recipe in sorted(recipes):
        assert (REPO / recipe).is_file(), recipe
    assert cli.main(["validate", *(str(REPO / r) for r in sorted(recipes))]) == 0, capsys.readouterr()


def test_the_command_table_has_one_row_per_command():
    rows = re.findall(r"^\| `hubswap (\w+)", section(_text(README), "Commands"), re.M)
    assert sorted(rows) == sorted(c.name for c in cli.COMMANDS)
    assert len(rows) == len(set(rows))


def test_extras_named_exist():
    extras = set(tomllib.loads(_text(REPO / "pyproject.toml"))["project"]["optional-dependencies"])
    named = {e.strip() for group in re.findall(r"hubswap\[([^\]]+)\]", _text(README)) for e in group.split(",")}
    listed = re.search(r"^Extras: (.*?)(?:\n\n|\Z)", section(_text(README), "Install"), re.M | re.S)
    named |= set(re.findall(r"`(\w+)` \(", listed.group(1)))
    assert {"eval", "vllm", "demo", "dev"} <= named
    assert named <= extras, named - extras


def test_the_flagship_recipe_is_shown_as_it_is():
    shown = blocks(section(_text(README), "A recipe"), "toml")
    assert shown == [_text(REPO / "recipes/llama-swahili-math.toml")]


def test_the_python_example_uses_real_fields():
    from hubswap.evaluate.results import EvalResults, LanguageScores, ModelResult
    from hubswap.pipeline import BuildOptions, BuildResult

    (example,) = blocks(_text(README), "python")
    fields = {"eval_results": BuildResult, "models": EvalResults, "languages": ModelResult,
              "accuracy": LanguageScores}
    for name, owner in fields.items():
        assert f".{name}" in example
        assert name in (getattr(owner, "model_fields", None) or owner.__dataclass_fields__), (name, owner)
    shown = re.findall(r"BuildOptions\(([^)]*)\)", _text(README))
    options = {o for s in shown for o in re.findall(r"(\w+)=", s)}
    assert options and options <= set(BuildOptions.__dataclass_fields__), options
    for recipe in re.findall(r'build\("([^"]+)"', example):
        assert (REPO / recipe).is_file(), recipe


# --- exit codes: stated once, in hubswap/errors.py -----------------------------------------------


def _error_classes() -> list[type]:
    found, todo = [], [errors.HubswapError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_has_a_listed_code():
    assert {c.exit_code for c in _error_classes()} | {0, 130} == set(errors.EXIT_CODES)


def test_the_readme_exit_code_table_is_errors_py():
    table = section(_text(README), "Errors and exit codes")
    rows = re.findall(r"^\| (\d+) \| (.*?) \| (.*?) \|$", table, re.M)
    shown = {int(code): (meaning, set(re.findall(r"`(\w+)`", raised))) for code, meaning, raised in rows}
    expected = {code: (meaning, {c.__name__ for c in _error_classes() if c.exit_code == code})
                for code, meaning in errors.EXIT_CODES.items()}
    assert shown == expected
    assert [int(code) for code, _, _ in rows] == list(errors.EXIT_CODES)


def test_help_lists_every_exit_code():
    for code, meaning in errors.EXIT_CODES.items():
        assert re.search(rf"^  {code}\s+{re.escape(meaning)}$", cli.EPILOG, re.M), code


@pytest.mark.parametrize("page", [p for p in PAGES if p != README], ids=lambda p: p.relative_to(REPO).as_posix())
def test_other_pages_link_to_the_exit_codes_instead_of_restating_them(page):
    text = _text(page)
    restated = re.findall(r"\bexit(?:s| code)? (?:[0-9]|130)\b|^\| (?:[0-9]|130) \|", text, re.M)
    assert restated == [], f"{page.name} restates exit codes: link to README.md#errors-and-exit-codes"
