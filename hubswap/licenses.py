"""The merge's licence, from its parents: what each parent's card says, the decision, the obligations.

    parent_license(model)                 a parent's card metadata (README.md through huggingface_hub's
                                          ModelCard) and the licence files it carries
    decide_license(parents, publish, ...) inherit, take the recipe's, or refuse (``LicenseConflictError``)
    write_license_files(record, ...)      the parents' licence files and the Notice file, into the model

``TERMS`` is the table of obligations, as data: what a licence asks of whoever publishes a model
derived from a model under it (an attribution shown prominently, a Notice file, a name prefix).
It is a help, not legal advice: the card points at each licence's own text.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from hubswap.errors import LicenseConflictError
from hubswap.records import LicenseRecord, ParentLicense

log = logging.getLogger(__name__)

CARD = "README.md"
NOTICE = "NOTICE"
# Licence files at the top of a model repo: LICENSE, LICENSE.txt, LICENCE.md, COPYING, NOTICE,
# USE_POLICY.md (Meta's acceptable use policy), LICENSE-MODEL and the like.
_LICENSE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|USE_POLICY)([-_][A-Za-z0-9]+)?(\.(txt|md|rst))?$",
                           re.IGNORECASE)
ROLE_ORDER = ("task", "language", "base")


def is_license_file(name: str) -> bool:
    return "/" not in name and bool(_LICENSE_FILE.match(name))


def card_files(names) -> list[str]:
    """The files of a model that say under which terms it is published: its card and licence files."""
    return sorted(n for n in names if n == CARD or is_license_file(n))


@dataclass(frozen=True)
class Terms:
    """What a licence asks of a model derived from a model under it."""

    title: str
    link: str | None
    built_with: str | None = None  # to show prominently (the card's first lines)
    notice: str | None = None  # a line of the Notice file shipped with the model
    name_prefix: str | None = None  # the derived model's name must begin with this
    duties: tuple[str, ...] = ()  # the rest, in words, for the card


def _llama(version: str, page: str, built_with: str = "Built with Llama", prefix: str = "Llama") -> Terms:
    return Terms(
        title=f"Llama {version} Community License Agreement", link=f"https://www.llama.com/{page}/license/",
        built_with=built_with, name_prefix=prefix,
        notice=f"Llama {version} is licensed under the Llama {version} Community License, "
               "Copyright © Meta Platforms, Inc. All Rights Reserved.",
        duties=("a copy of the agreement ships with the model (the parents' LICENSE, copied here)",
                "use follows the Acceptable Use Policy (USE_POLICY.md)"),
    )


_QWEN = dict(built_with="Built with Qwen",
             notice="Qwen is licensed under the Qwen LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. All Rights Reserved.",
             duties=("a copy of the agreement ships with the model (the parents' LICENSE, copied here)",))
_CHANGES = "state the changes made (the layer map above)"

# Keyed by the Hub's `license` id, or by `license_name` for `license: other`.
TERMS: dict[str, Terms] = {
    "llama3": Terms(
        title="Meta Llama 3 Community License Agreement", link="https://www.llama.com/llama3/license/",
        built_with="Built with Meta Llama 3", name_prefix="Llama 3",
        notice="Meta Llama 3 is licensed under the Meta Llama 3 Community License, "
               "Copyright © Meta Platforms, Inc. All Rights Reserved.",
        duties=("a copy of the agreement ships with the model (the parents' LICENSE, copied here)",
                "use follows the Acceptable Use Policy (USE_POLICY.md)"),
    ),
    "llama3.1": _llama("3.1", "llama3_1"),
    "llama3.2": _llama("3.2", "llama3_2"),
    "llama3.3": _llama("3.3", "llama3_3"),
    "gemma": Terms(
        title="Gemma Terms of Use", link="https://ai.google.dev/gemma/terms",
        notice="Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms",
        duties=("the use restrictions of §3.2 (the Gemma Prohibited Use Policy) bind every recipient",
                "a copy of the Terms ships with the model", "modified files carry a notice that they were modified"),
    ),
    "qwen": Terms(title="Qwen License Agreement", link=None, **_QWEN),
    "tongyi-qianwen": Terms(title="Tongyi Qianwen License Agreement", link=None, **_QWEN),
    "qwen-research": Terms(title="Qwen Research License Agreement (non-commercial)", link=None, **_QWEN),
    "apache-2.0": Terms(title="Apache License 2.0", link="https://www.apache.org/licenses/LICENSE-2.0",
                        duties=("carry the licence and the parents' NOTICE files", _CHANGES)),
    "mit": Terms(title="MIT License", link="https://opensource.org/license/mit",
                 duties=("keep the copyright and permission notice",)),
    "bsd-3-clause": Terms(title="BSD 3-Clause License", link="https://opensource.org/license/bsd-3-clause",
                          duties=("keep the copyright notice and the licence's conditions",)),
    "cc-by-4.0": Terms(title="Creative Commons Attribution 4.0", link="https://creativecommons.org/licenses/by/4.0/",
                       duties=("credit the parents and link the licence", _CHANGES)),
    "cc-by-sa-4.0": Terms(title="Creative Commons Attribution-ShareAlike 4.0",
                          link="https://creativecommons.org/licenses/by-sa/4.0/",
                          duties=("credit the parents and link the licence", _CHANGES,
                                  "publish the merge under the same licence")),
    "cc-by-nc-4.0": Terms(title="Creative Commons Attribution-NonCommercial 4.0",
                          link="https://creativecommons.org/licenses/by-nc/4.0/",
                          duties=("credit the parents and link the licence", _CHANGES, "no commercial use")),
    "openrail": Terms(title="Open RAIL License", link="https://huggingface.co/blog/open_rail",
                      duties=("pass the use restrictions on to every recipient",)),
}


def _key(license: str | None, name: str | None) -> str | None:
    """What identifies a licence: its Hub id, or for `other` its `license_name`."""
    if license is None:
        return None
    return f"other:{name}" if license == "other" and name else license


def _shown(license: str | None, name: str | None) -> str:
    if license is None:
        return "none stated"
    return f"other ({name})" if license == "other" and name else license


def terms_of(license: str | None, name: str | None) -> Terms | None:
    if license is None:
        return None
    return TERMS.get(name or "") if license == "other" else TERMS.get(license)


# -- reading the parents ---------------------------------------------------------------------------


def parent_license(model) -> ParentLicense:
    """A parent's card metadata (``license``, ``license_name``, ``license_link``, ``datasets``) and the
    licence files it carries. ``model`` is an input model (hubswap.inputs.InputModel): a Hub model
    pinned to a commit or a local folder; its card is read at that commit through
    ``huggingface_hub.ModelCard``."""
    from huggingface_hub import ModelCard

    names = set(model.files())
    files = sorted(n for n in names if is_license_file(n))
    card = _local(model, CARD) if CARD in names else None
    # A card without a metadata block says nothing here (ModelCard would say so on the console).
    if card is None or not Path(card).read_text(encoding="utf-8", errors="replace").lstrip().startswith("---"):
        return ParentLicense(license=None, license_name=None, license_link=None, datasets=[], files=files)
    data = ModelCard.load(card, ignore_metadata_errors=True).data
    datasets = data.datasets or []
    return ParentLicense(
        license=_text(data.license), license_name=_text(data.license_name), license_link=_text(data.license_link),
        datasets=[datasets] if isinstance(datasets, str) else [str(d) for d in datasets], files=files,
    )


def _text(v) -> str | None:
    if isinstance(v, list):  # a few cards list licences; the Hub shows the first
        v = v[0] if v else None
    return str(v) if v not in (None, "") else None


def _local(model, name: str) -> Path:
    """A small file of an input model on disk (downloaded at its pinned commit for a Hub model)."""
    return model.local_path(name) if getattr(model, "commit", None) else model.folder() / name


# -- the decision ----------------------------------------------------------------------------------


def decide_license(parents: dict[str, ParentLicense], displays: dict[str, str], publish, *,
                   model_name: str) -> LicenseRecord:
    """The merge's licence from its parents' and the recipe's ``[publish]`` (or None).

    - no licence in the recipe, and every parent that states one states the same: inherited;
    - the recipe's licence, when no parent states another;
    - parents that differ, or a recipe that contradicts them: refused with one line naming each
      parent's licence, unless the recipe states the licence and ``license_acknowledged = true``.
    """
    stated = {role: p for role, p in parents.items() if p.license is not None}
    keys = {_key(p.license, p.license_name) for p in stated.values()}
    want = (publish.license, publish.license_name, publish.license_link) if publish and publish.license else None
    acknowledged = bool(publish and publish.license_acknowledged)
    each = ", ".join(f"{role} {displays[role]}: {_shown(p.license, p.license_name)}"
                     for role, p in _ordered(parents))
    warnings = [f"the {role} model {displays[role]} states no licence in its card"
                for role, p in _ordered(parents) if p.license is None and stated]
    if want is None:
        if len(keys) > 1:
            raise LicenseConflictError(
                f"the parents' licences differ ({each}); the merge's licence cannot be inherited",
                hint="state it in the recipe, [publish] license = \"...\", with license_acknowledged = true "
                     "once you have checked that every parent's terms allow it (docs/recipes.md#the-licence)")
        if not keys:
            license, name, link, decision = None, None, None, "none"
        else:
            first = next(p for _, p in _ordered(stated))
            license, name, link, decision = first.license, first.license_name, first.license_link, "inherited"
    else:
        license, name, link = want
        if keys - {_key(license, name)}:
            if not acknowledged:
                raise LicenseConflictError(
                    f"[publish] license = {_shown(license, name)!r} contradicts the parents' licences ({each})",
                    hint="take the parents' licence, or keep yours and add [publish] license_acknowledged = true "
                         "once you have checked that every parent's terms allow it (docs/recipes.md#the-licence)")
            decision = "acknowledged"
            warnings.append(f"license {_shown(license, name)!r} is the recipe's, acknowledged over the parents' ({each})")
        else:
            decision = "recipe"
    if link is None and (t := terms_of(license, name)) is not None:
        link = t.link
    # Every parent's terms bind the merge, whatever licence it is published under.
    terms = [t for t in dict.fromkeys(
        terms_of(x.license, x.license_name) for x in [*(p for _, p in _ordered(stated))]
        + ([_As(license, name)] if license else [])) if t is not None]
    built_with = list(dict.fromkeys(t.built_with for t in terms if t.built_with))
    notice = list(dict.fromkeys(t.notice for t in terms if t.notice))
    for t in terms:
        if t.name_prefix and not _begins(model_name, t.name_prefix):
            warnings.append(f"the {t.title} asks that a derived model's name begin with {t.name_prefix!r}; "
                            f"{model_name!r} does not")
    duties = list(dict.fromkeys(d for t in terms for d in t.duties))
    for w in warnings:
        log.warning("licence: %s", w)
    return LicenseRecord(license=license, license_name=name if license == "other" else None,
                         license_link=link, decision=decision, parents=parents, built_with=built_with,
                         notice=notice, obligations=duties, warnings=warnings, files={})


@dataclass(frozen=True)
class _As:
    license: str | None
    license_name: str | None


def _ordered(parents: dict):
    return [(r, parents[r]) for r in ROLE_ORDER if r in parents]


def _begins(name: str, prefix: str) -> bool:
    """Whether a model name begins with a prefix, ignoring case and separators ("llama-3.1-8b" begins
    with "Llama 3")."""
    squash = lambda s: re.sub(r"[^a-z0-9.]", "", s.lower())  # noqa: E731
    return squash(name).startswith(squash(prefix))


# -- the files -------------------------------------------------------------------------------------


def write_license_files(record: LicenseRecord, models: dict, out: Path) -> LicenseRecord:
    """Copy the parents' licence files into ``out`` and write the Notice file; returns ``record``
    with ``files`` ({output file: where it came from}).

    A file that every parent carrying it carries identically goes to the top of the folder under its
    own name; differing copies go to ``licenses/<role>/<name>``. The parents' NOTICE files and the
    notices the licences ask for become one ``NOTICE`` file.
    """
    files: dict[str, str] = {}
    notices: list[str] = []
    by_name: dict[str, list[tuple[str, Path]]] = {}
    for role, p in _ordered(record.parents):
        for name in p.files:
            by_name.setdefault(name, []).append((role, _local(models[role], name)))
    for name, copies in sorted(by_name.items()):
        if name.upper().startswith(NOTICE):
            notices += [src.read_text(encoding="utf-8", errors="replace").strip() for _, src in copies]
            continue
        distinct = {src.read_bytes() for _, src in copies}
        targets = [(name, copies)] if len(distinct) == 1 else [(f"licenses/{role}/{name}", [(role, src)])
                                                                for role, src in copies]
        for target, sources in targets:
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sources[0][1], out / target)
            files[target] = ", ".join(f"{role}:{name}" for role, _ in sources)
    notices += record.notice
    if notices:
        (out / NOTICE).write_text("\n\n".join(dict.fromkeys(n for n in notices if n)) + "\n", encoding="utf-8")
        files[NOTICE] = "the parents' notices" if len(notices) > len(record.notice) else "the licences' notices"
    return record.model_copy(update={"files": dict(sorted(files.items()))})
