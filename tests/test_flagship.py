"""recipes/llama-swahili-math.toml itself, unedited, end to end against stand-ins of its repos.

tests/support/standins.py makes tiny models with the traits of meta-llama/Llama-3.1-8B,
nvidia/OpenMath2-Llama3.1-8B and Lugha-Llama/Lugha-Llama-8B-wura; the test Hub serves them under
those ids, and juletxara/mgsm as the Hub does (a loading script on main, parquet on
refs/convert/parquet). `hubswap lock`, `plan` and `build` run as a user would, with HF_ENDPOINT
pointing at the test Hub and only `--limit` given on the command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hubswap.evaluate.data import PARQUET_REVISION
from tests.support.cli import run_hubswap
from tests.support.mgsm import parquet as _parquet
from tests.support.mgsm import rows as _rows
from tests.support.standins import REPOS, special_id

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "llama-swahili-math.toml"
TOKEN = "hf_test_reader_granted_llama"  # a read token whose user accepted the Llama licence


@pytest.fixture(scope="module")
def flagship_hub(hub, standins, mgsm_dir):
    hub.add_user("reader", TOKEN, role="read")
    for role, repo in REPOS.items():
        # meta-llama's repos are gated: only users who accepted the licence read their files
        hub.upload_folder(repo, standins[role], message=f"stand-in for {repo}", gated=role == "base")
    hub.repos[REPOS["base"]].granted.add("reader")
    hub.commit_files("datasets/juletxara/mgsm", {
        "README.md": b"---\nlicense: cc-by-sa-4.0\n---\n# MGSM\n",
        "mgsm.py": b"import datasets  # the original loading script\n",
    })
    parquet = {f"{lang}/{split}/0000.parquet": _parquet(_rows(mgsm_dir, lang, split))
               for lang in ("sw", "en") for split in ("test", "train")}
    hub.commit_files("datasets/juletxara/mgsm", parquet, branch=PARQUET_REVISION, message="parquet conversion")
    return hub


def flagship_env(home: Path) -> dict[str, str]:
    """Caches under ``home``; the engine in the worker's own process, one OpenMP thread; the reader's token."""
    return {"HF_HOME": str(home / "hf_home"), "HF_HUB_DISABLE_XET": "1", "HUBSWAP_CACHE": str(home / "hubswap-cache"),
            "VLLM_CACHE_ROOT": str(home / "vllm"), "TMPDIR": str(home), "OMP_NUM_THREADS": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_TOKEN": TOKEN}


def test_the_flagship_recipe_builds_against_stand_ins_of_its_repos(flagship_hub, tmp_path):
    work = tmp_path / "checkout"
    (work / "recipes").mkdir(parents=True)
    recipe = work / "recipes" / RECIPE.name
    shutil.copyfile(RECIPE, recipe)
    shutil.copytree(REPO / "model_cards", work / "model_cards")  # its [publish] card
    assert recipe.read_bytes() == RECIPE.read_bytes()
    run = lambda *a: run_hubswap(*a, hub=flagship_hub, env=flagship_env(tmp_path), cwd=work, timeout=900)  # noqa: E731

    out = run("lock", "recipes/llama-swahili-math.toml")
    assert out.returncode == 0, out.stderr
    lock = json.loads((work / "recipes" / "llama-swahili-math.lock.json").read_text())
    assert {r: m["repo"] for r, m in lock["models"].items()} == REPOS
    base_files = set(lock["models"]["base"]["files"])
    assert not any(f.startswith("original/") for f in base_files), base_files  # pickled, never used

    out = run("plan", "recipes/llama-swahili-math.toml")
    assert out.returncode == 0, out.stderr
    assert "LLLLL~TTTTTTTTTTTTTTTTTTTTTTT~LL" in out.stdout

    out = run("build", "recipes/llama-swahili-math.toml", "--limit", "2")
    err = out.stderr
    warnings = [line for line in err.splitlines() if line.startswith("preflight:")]
    assert any("Lugha-Llama/Lugha-Llama-8B-wura" in w and "score.weight" in w and "lm_head.weight" in w
               for w in warnings), err
    assert any("non_layer = \"language\"" in w and "<|eot_id|>" in w and "equal the base's" in w
               for w in warnings), err
    assert not any("head_dim" in w or "rope" in w or "vocabulary" in w for w in warnings), warnings
    assert len(warnings) == 2, warnings

    model = work / "builds" / "llama-3.1-8b-swahili-math" / "model"
    results = json.loads((model / "hubswap" / "eval_results.json").read_text())
    assert results["settings"]["dtype"] == "bfloat16"
    assert {m: e["engine"]["dtype"] for m, e in results["models"].items()} == dict.fromkeys(
        ("merged", "task", "language"), "bfloat16")
    eos = {m: e["engine"]["eos"] for m, e in results["models"].items()}
    instruct = [special_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    assert eos["merged"] == eos["task"] == {"source": "generation_config.json", "ids": instruct,
                                            "tokens": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]}
    assert eos["language"] == {"source": "tokenizer", "ids": [special_id("<|end_of_text|>")],
                               "tokens": ["<|end_of_text|>"]}
    # The stand-ins end every answer at once on <|end_of_text|>, in each model's own eos set.
    for name, entry in results["models"].items():
        assert entry["languages"]["sw"]["mean_generated_tokens"] == 1, name
    assert out.returncode == 0 and results["gate"]["passed"] is True, err
    card = (model / "README.md").read_text()
    assert "every model in `bfloat16`" in card
    # The licence: the recipe's llama3.1, which all three parents' cards state; their files and
    # what the Llama 3.1 licence asks (Built with Llama, the Notice file, a name beginning "Llama").
    lic = json.loads((model / "hubswap" / "lock.json").read_text())["license"]
    assert (lic["license"], lic["decision"], lic["warnings"]) == ("llama3.1", "recipe", [])
    assert {(model / f).is_file() for f in ("LICENSE", "USE_POLICY.md", "NOTICE")} == {True}
    header, body = card.split("\n---\n", 1)
    assert "license: llama3.1" in header and "- nvidia/OpenMathInstruct-2" in header
    assert "pipeline_tag: text-generation" in header and "arxiv:2410.01335" in header
    assert body.lstrip().startswith("# llama-3.1-8b-swahili-math\n\n**Built with Llama**")
    # The recipe's card template: its experts and limits in prose, kept in the build.
    assert (model / "hubswap" / "card.md.j2").read_bytes() == (REPO / "model_cards" / "llama-swahili-math.md.j2").read_bytes()
    assert "fine-tuned by NVIDIA on [OpenMathInstruct-2]" in body and "continually pretrained on African languages" in body
    assert "Answers may reason in English even when asked in Swahili" in body
    for published in ("README.md", "hubswap/lock.json", "hubswap/eval_results.json"):
        text = (model / published).read_text()
        assert str(tmp_path) not in text and str(Path.home()) not in text and TOKEN not in text, published
    assert TOKEN not in err
    config = json.loads((model / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and "score.weight" not in json.loads(
        (model / "model.safetensors.index.json").read_text())["weight_map"]
