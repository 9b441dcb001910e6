"""Small helpers shared by tests (recipes for tiny families)."""

from __future__ import annotations

from pathlib import Path


def local_recipe(path: Path, family: dict[str, Path], *, bottom=2, top=1, transition=1, dtype="float32",
                 non_layer="language", files_from="task", extra: str = "", name: str = "tiny-swap") -> Path:
    """Write a recipe for a tiny family's local folders; returns its path."""
    base = f'[models.base]\npath = "{family["base"]}"\n' if "base" in family else ""
    path.write_text(
        f'schema_version = 1\nname = "{name}"\n\n{base}'
        f'[models.task]\npath = "{family["task"]}"\n\n[models.language]\npath = "{family["language"]}"\n\n'
        f"[swap]\nbottom = {bottom}\ntop = {top}\ntransition = {transition}\n"
        f'non_layer = "{non_layer}"\nfiles_from = "{files_from}"\ndtype = "{dtype}"\n{extra}'
    )
    return path
