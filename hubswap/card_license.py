"""The card's licence section and what it says of each parent, from the build record's licence
(``records.LicenseRecord``, decided by ``hubswap.licenses``): data in, data out, like card_figure.py."""

from __future__ import annotations

from hubswap.licenses import ROLE_ORDER, terms_of
from hubswap.recipe import Publish
from hubswap.records import LicenseRecord, ModelEntry

HF = "https://huggingface.co"
DECISIONS = {"inherited": "inherited from the parents, whose cards all state it",
             "recipe": "as the recipe states it", "none": "neither the recipe nor any parent's card states one",
             "acknowledged": "as the recipe states it, acknowledged over the parents' licences (below)"}


def license_section(lic: LicenseRecord | None, publish: Publish | None, models: dict[str, ModelEntry]) -> dict:
    """The merge's licence as the card shows it: the build's decision, or for a build made before
    licences were read, the recipe's. Parents are listed by role (``parents[i]["role"]``)."""
    if lic is None:
        lid = publish.license if publish else None
        name = publish.license_name if publish else None
        link, how, parents = (publish.license_link if publish else None), ("as set by the recipe" if lid else
                                                                          "the recipe sets none"), []
        out = {"obligations": [], "files": [], "warnings": []}
    else:
        lid, name, link, how = lic.license, lic.license_name, lic.license_link, DECISIONS[lic.decision]
        parents = [{"role": role, "model": _link(models[role]),
                    "license": f"`{shown(p.license, p.license_name)}`" if p.license else "none stated"}
                   for role, p in lic.parents.items() if role in models]
        out = {"obligations": lic.obligations, "files": list(lic.files.items()), "warnings": lic.warnings}
    terms = terms_of(lid, name)
    return {"id": lid, "name": name, "link": link or (terms.link if terms else None), "shown": shown(lid, name),
            "title": terms.title if terms else None, "how": how, "parents": parents, **out}


def shown(license: str | None, name: str | None) -> str | None:
    return f"other ({name})" if license == "other" and name else license


def _link(m: ModelEntry) -> str:
    return f"[{m.repo}]({HF}/{m.repo})" if m.repo else f"local folder `{m.path}`"


def parent_datasets(lic: LicenseRecord | None) -> list[str]:
    """The datasets the parents' cards name (what the experts were trained on), in order."""
    parents = lic.parents if lic else {}
    return list(dict.fromkeys(d for role in ROLE_ORDER if role in parents for d in parents[role].datasets))


def experts(lic: LicenseRecord | None, models: dict[str, ModelEntry]) -> list[dict]:
    """The experts as the default card describes them, by role: name, link, licence and datasets from their cards."""
    parents = lic.parents if lic else {}
    out = []
    for role, m in models.items():
        p = parents.get(role)
        out.append({"role": role, "name": m.repo or m.path, "link": f"{HF}/{m.repo}" if m.repo else None,
                    "license": (p.license_name or p.license) if p and p.license else None,
                    "datasets": list(p.datasets) if p else []})
    return out
