"""The merge's licence from its parents (hubswap/licenses.py): the decision table, then real builds
against the test Hub whose parent repos carry real card metadata and licence files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubswap.errors import LicenseConflictError
from hubswap.licenses import TERMS, decide_license, is_license_file
from hubswap.recipe import Publish
from hubswap.records import ParentLicense
from tests.support.cli import run_hubswap
from tests.support.hub_server import WRITE, seed
from tests.support.numpy_family import make_family
from tests.support.recipes import hub_models, write_recipe
from tests.support.standins import CARDS, LLAMA_3_1_AGREEMENT, USE_POLICY
from tests.support.standins import write_card as write_parent_card

ROLES = ("task", "language", "base")
DISPLAYS = {"task": "org/task@main", "language": "org/language@main", "base": "org/base@main"}


def parent(license: str | None, name: str | None = None, link: str | None = None) -> ParentLicense:
    return ParentLicense(license=license, license_name=name, license_link=link, datasets=[], files=[])


# (task, language, base), the recipe's [publish] keys -> the licence, how it was decided; or the refusal.
DECISIONS = [
    (("llama3.1", "llama3.1", "llama3.1"), {}, ("llama3.1", "inherited")),
    (("llama3.1", "llama3.1", None), {}, ("llama3.1", "inherited")),
    (("llama3.1", "llama3.1", "llama3.1"), {"license": "llama3.1"}, ("llama3.1", "recipe")),
    ((None, None, None), {}, (None, "none")),
    ((None, None, None), {"license": "mit"}, ("mit", "recipe")),
    (("apache-2.0", "llama3.1", "llama3.1"), {}, "the parents' licences differ"),
    (("apache-2.0", "llama3.1", "llama3.1"), {"license": "llama3.1"}, "contradicts the parents' licences"),
    (("apache-2.0", "llama3.1", "llama3.1"), {"license": "llama3.1", "license_acknowledged": True},
     ("llama3.1", "acknowledged")),
    (("llama3.1", "llama3.1", "llama3.1"), {"license": "apache-2.0"}, "contradicts the parents' licences"),
    (("llama3.1", "llama3.1", "llama3.1"), {"license": "apache-2.0", "license_acknowledged": True},
     ("apache-2.0", "acknowledged")),
    (("gemma", "apache-2.0", "gemma"), {}, "the parents' licences differ"),
    ((("other", "qwen"), ("other", "qwen"), ("other", "qwen")), {}, ("other", "inherited")),
    ((("other", "qwen"), ("other", "qwen-research"), None), {}, "the parents' licences differ"),
]


@pytest.mark.parametrize(("parents", "publish", "expected"), DECISIONS)
def test_the_decision_table(parents, publish, expected):
    models = {role: parent(*lic) if isinstance(lic, tuple) else parent(lic) 
              for role, lic in zip(ROLES, parents, strict=True)}
    pub = Publish(repo="org/Llama-3.1-merge", **publish)
    if isinstance(expected, str):
        with pytest.raises(LicenseConflictError) as e:
            decide_license(models, DISPLAYS, pub, model_name="Llama-3.1-merge")
        msg = str(e.value)
        assert expected in msg and "\n" not in msg
        for role in ROLES:  # one line naming every model's licence
            lic = models[role]
            shown = "none stated" if lic.license is None else (
                f"other ({lic.license_name})" if lic.license == "other" else lic.license)
            assert f"{role} {DISPLAYS[role]}: {shown}" in msg
        assert "license_acknowledged = true" in e.value.hint
        return
    got = decide_license(models, DISPLAYS, pub, model_name="Llama-3.1-merge")
    assert (got.license, got.decision) == expected
    if got.license == "other":
        assert got.license_name == "qwen" and got.built_with == ["Built with Qwen"]


def test_llama_obligations_and_the_name_warning():
    models = {role: parent("llama3.1") for role in ROLES}
    ok = decide_license(models, DISPLAYS, None, model_name="llama-3.1-8b-swahili-math")
    assert ok.built_with == ["Built with Llama"] and ok.warnings == []
    assert ok.notice == ["Llama 3.1 is licensed under the Llama 3.1 Community License, Copyright © Meta Platforms, "
                         "Inc. All Rights Reserved."]
    assert ok.license_link == "https://www.llama.com/llama3_1/license/"
    bad = decide_license(models, DISPLAYS, None, model_name="swahili-math")
    assert any("begin with 'Llama'" in w and "'swahili-math'" in w for w in bad.warnings)
    # Llama 3 asks for "Llama 3" at the start, "Built with Meta Llama 3"
    three = decide_license({r: parent("llama3") for r in ROLES}, DISPLAYS, None, model_name="Llama-2-fork")
    assert three.built_with == ["Built with Meta Llama 3"] and any("'Llama 3'" in w for w in three.warnings)
    # every parent's terms bind the merge, even when the recipe publishes it under another licence
    mixed = decide_license({"task": parent("gemma"), "language": parent("llama3.2")}, DISPLAYS,
                           Publish(repo="org/x", license="llama3.2", license_acknowledged=True), model_name="Llama-x")
    assert mixed.built_with == ["Built with Llama"]
    assert any(n.startswith("Gemma is provided") for n in mixed.notice)
    assert any(n.startswith("Llama 3.2 is licensed") for n in mixed.notice)


def test_the_terms_table_covers_the_families():
    for lic in ("llama3", "llama3.1", "llama3.2", "llama3.3", "gemma", "qwen", "apache-2.0", "mit", "cc-by-4.0"):
        assert lic in TERMS
    assert all(TERMS[f"llama3.{v}"].name_prefix == "Llama" for v in (1, 2, 3))
    assert [n for n in ("LICENSE", "LICENSE.txt", "LICENCE.md", "USE_POLICY.md", "NOTICE", "COPYING", "LICENSE-MODEL",
                        "README.md", "original/LICENSE", "license_plate.json") if is_license_file(n)] == [
        "LICENSE", "LICENSE.txt", "LICENCE.md", "USE_POLICY.md", "NOTICE", "COPYING", "LICENSE-MODEL"]


@pytest.mark.parametrize(("publish", "message"), [
    ({"license": "other"}, "needs license_name"),
    ({"license": "mit", "license_name": "x"}, "go with license = \"other\""),
    ({"license_acknowledged": True}, "state it"),
    ({"license": "Apache 2"}, "not a Hub licence id"),
])
def test_recipe_licence_keys_are_checked(tmp_path, publish, message):
    write_recipe(tmp_path / "r.toml", hub_models(), publish={"repo": "org/x", **publish})
    r = run_hubswap("validate", "r.toml", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


# -- real builds against the test Hub ----------------------------------------------------------


@pytest.fixture(scope="module")
def licensed_hub(hub, tmp_path_factory):
    """org/base, org/task, org/language: a tiny numpy family whose cards and licence files are the
    flagship's (llama3.1, LICENSE, USE_POLICY.md); org/language-apache and org/language-bare are the
    language expert under apache-2.0 and with a card that states no licence."""
    root = tmp_path_factory.mktemp("licensed")
    (root / "tok").mkdir()
    family = make_family(root / "family", root / "tok")
    for role, folder in family.items():
        write_parent_card(folder, f"tiny {role}", **CARDS[role])
    seed(hub, family)
    apache = root / "apache"
    make_family(apache, root / "tok")
    write_parent_card(apache / "language", "tiny language, apache", license="apache-2.0", datasets=["org/corpus"],
                      files={"LICENSE": "Apache License\nVersion 2.0, January 2004\n", "NOTICE": "Tiny corp.\n"})
    hub.upload_folder("org/language-apache", apache / "language")
    return hub, family


def build(hub, work: Path, name: str, models, publish=None, *args):
    write_recipe(work / f"{name}.toml", models, name=name, publish=publish)
    return run_hubswap("build", f"{name}.toml", "--no-eval", "-o", name, *args, cwd=work, hub=hub,
                       env={"HF_TOKEN": WRITE})


def test_same_licence_everywhere_is_inherited_with_its_files_and_obligations(licensed_hub, tmp_path):
    hub, _ = licensed_hub
    r = build(hub, tmp_path, "inherit", hub_models(), {"repo": "org/Llama-3.1-tiny-merge"}, "--push")
    assert r.returncode == 0, r.stderr
    model = tmp_path / "inherit" / "model"
    record = json.loads((model / "hubswap" / "lock.json").read_text())
    lic = record["license"]
    assert (lic["license"], lic["decision"]) == ("llama3.1", "inherited")
    assert {role: p["license"] for role, p in lic["parents"].items()} == {r: "llama3.1" for r in ("base", "task", "language")}
    assert lic["parents"]["task"]["datasets"] == ["nvidia/OpenMathInstruct-2"]
    # the parents' licence files are among the files the build read, hashed, and copied
    assert {"LICENSE", "USE_POLICY.md", "README.md"} <= set(record["models"]["base"]["files"])
    assert (model / "LICENSE").read_text() == LLAMA_3_1_AGREEMENT
    assert (model / "USE_POLICY.md").read_text() == USE_POLICY
    assert lic["files"] == {"LICENSE": "task:LICENSE, base:LICENSE", "NOTICE": "the licences' notices",
                            "USE_POLICY.md": "base:USE_POLICY.md"}
    assert (model / "NOTICE").read_text().startswith("Llama 3.1 is licensed under the Llama 3.1 Community License")
    assert {"LICENSE", "NOTICE", "USE_POLICY.md"} <= set(record["output"]["files"])
    assert lic["warnings"] == []
    card = (model / "README.md").read_text()
    header, body = card.split("\n---\n", 1)
    assert "license: llama3.1" in header and "- nvidia/OpenMathInstruct-2" in header and "- castorini/wura" in header
    assert body.lstrip().startswith("# inherit\n\n**Built with Llama**")  # shown prominently
    assert "inherited from the parents, whose cards all state it" in body
    # what is published is what was built: the licence files are in the Hub repo
    published = {s for s in hub.head("org/Llama-3.1-tiny-merge").files}
    assert {"LICENSE", "NOTICE", "USE_POLICY.md", "hubswap/recipe.lock.json"} <= published


def test_a_name_that_does_not_begin_with_llama_is_warned_about(licensed_hub, tmp_path):
    hub, _ = licensed_hub
    r = build(hub, tmp_path, "named", hub_models(), {"repo": "org/swahili-math"})
    assert r.returncode == 0, r.stderr
    assert "asks that a derived model's name begin with 'Llama'; 'swahili-math' does not" in r.stderr
    card = (tmp_path / "named" / "model" / "README.md").read_text()
    assert "> **Note:** the Llama 3.1 Community License Agreement asks that a derived model's name begin" in card


def test_different_licences_are_refused_in_one_line_unless_acknowledged(licensed_hub, tmp_path):
    hub, _ = licensed_hub
    models = {**hub_models(), "language": "org/language-apache"}
    r = build(hub, tmp_path, "mixed", models)
    assert r.returncode == 2, r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert line == ("error: the parents' licences differ (task org/task@main: llama3.1, language "
                    "org/language-apache@main: apache-2.0, base org/base@main: llama3.1); the merge's licence "
                    "cannot be inherited")
    assert not (tmp_path / "mixed" / "model").exists()  # refused before anything was written
    r = build(hub, tmp_path, "mixed", models, {"repo": "org/Llama-mixed", "license": "llama3.1"})
    assert r.returncode == 2 and "[publish] license = 'llama3.1' contradicts the parents' licences" in r.stderr
    r = build(hub, tmp_path, "mixed", models,
              {"repo": "org/Llama-mixed", "license": "llama3.1", "license_acknowledged": True})
    assert r.returncode == 0, r.stderr
    model = tmp_path / "mixed" / "model"
    lic = json.loads((model / "hubswap" / "lock.json").read_text())["license"]
    assert lic["decision"] == "acknowledged"
    # both parents' LICENSE files differ: each kept under its role; the apache NOTICE joins the notices
    assert (model / "licenses" / "language" / "LICENSE").read_text().startswith("Apache License")
    assert (model / "licenses" / "task" / "LICENSE").read_text() == LLAMA_3_1_AGREEMENT
    notice = (model / "NOTICE").read_text()
    assert "Tiny corp." in notice and "Llama 3.1 is licensed" in notice
    assert "- carry the licence and the parents' NOTICE files" in (model / "README.md").read_text()


def test_local_folders_cards_are_read_too(licensed_hub, tmp_path):
    _, family = licensed_hub
    r = build(None, tmp_path, "local", {role: family[role] for role in ("base", "task", "language")})
    assert r.returncode == 0, r.stderr
    lic = json.loads((tmp_path / "local" / "model" / "hubswap" / "lock.json").read_text())["license"]
    assert (lic["license"], lic["decision"]) == ("llama3.1", "inherited")
    assert (tmp_path / "local" / "model" / "LICENSE").is_file()


def test_a_republish_removes_the_licence_files_of_the_build_it_replaces(licensed_hub, tmp_path):
    """The first build (two licences, acknowledged) copied each parent's LICENSE under licenses/;
    the build pushed over it (--force: another recipe) has one licence and no such copies. The
    Apache copy must not stay in the repo beside the new model, while a file its owner added
    by hand stays."""
    hub, _ = licensed_hub
    repo = "org/Llama-republished"
    models = {**hub_models(), "language": "org/language-apache"}
    first = build(hub, tmp_path, "mixed", models, {"repo": repo, "license": "llama3.1", "license_acknowledged": True},
                  "--push")
    assert first.returncode == 0, first.stderr
    assert {"licenses/language/LICENSE", "licenses/task/LICENSE"} <= set(hub.head(repo).files)
    hub.commit_files(repo, {"LICENSE-owner-notes.md": b"Added by the repo's owner.\n"}, message="by hand")
    second = build(hub, tmp_path, "inherit", hub_models(), {"repo": repo}, "--push", "--force")
    assert second.returncode == 0, second.stderr
    published = set(hub.head(repo).files)
    assert not {n for n in published if n.startswith("licenses/")}, sorted(published)
    assert {"LICENSE", "USE_POLICY.md", "NOTICE", "LICENSE-owner-notes.md"} <= published
    record = json.loads((tmp_path / "inherit" / "model" / "hubswap" / "lock.json").read_text())
    assert published - {".gitattributes", "LICENSE-owner-notes.md"} == set(record["output"]["files"]) | {
        "README.md", *(n for n in published if n.startswith("hubswap/"))}
