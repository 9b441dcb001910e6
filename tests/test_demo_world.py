"""The demo world (hubswap/demo_world.py, hubswap/demo_weights.py): built by construction,
byte-identical run to run, its MGSM read by the real loader and prompts, and its models doing what
they are built to do, greedily, on transformers and on vLLM's CPU engine alike, in float32 and
bfloat16: the task expert solves English only, the language expert neither language, and the
layer swap (bottom 2, top 2) both."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hubswap.demo_world import ROLES, write_world
from hubswap.evaluate.data import holds_mgsm, load_language
from hubswap.evaluate.prompts import build_prompts
from hubswap.evaluate.scoring import score_response
from tests.support.recipes import write_recipe


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_world_is_byte_identical_across_runs(tmp_path):
    first, second = write_world(tmp_path / "one"), write_world(tmp_path / "two")
    a, b = digests(tmp_path / "one"), digests(tmp_path / "two")
    assert a == b
    assert {f"{r}/model.safetensors" for r in ROLES} <= set(a)
    assert set(first) == set(second) == {*ROLES, "mgsm"}
    # the three models differ where they are built to differ, and nowhere else
    from safetensors.numpy import load_file

    base, task, lang = (load_file(first[r] / "model.safetensors") for r in ROLES)
    changed = {r: sorted({n.split(".")[2] if ".layers." in n else n for n in base if (m[n] != base[n]).any()})
               for r, m in (("task", task), ("language", lang))}
    assert changed["task"] == ["2", "3"]
    assert changed["language"] == ["0", "1", "6", "lm_head.weight", "model.embed_tokens.weight"]


def test_the_worlds_mgsm_reads_like_mgsm(tmp_path):
    world = write_world(tmp_path / "w")
    for lang, cue in (("en", "Step-by-Step Answer:"), ("sw", "Jibu la Hatua kwa Hatua:")):
        data = load_language(str(world["mgsm"]), lang)
        assert len(data.test) >= 100 and len(data.train) == 8
        prompt = build_prompts(data, "native-cot", num_fewshot=0, limit=1)[0]
        assert prompt.text.endswith(f"?\n{cue}") and prompt.gold == data.test[0].answer_number
        line = "The answer is {}." if lang == "en" else "Jibu ni {}."
        assert score_response(" " + line.format(prompt.gold), lang, prompt.gold).correct
        assert build_prompts(data, "native-cot", num_fewshot=8, limit=1)[0].text.count(cue) == 9
    en, sw = (load_language(str(world["mgsm"]), lang) for lang in ("en", "sw"))
    assert [q.answer_number for q in en.test] == [q.answer_number for q in sw.test]  # parallel, as MGSM
    assert not holds_mgsm(en) and not holds_mgsm(sw)  # in MGSM's layout, but not MGSM: never indexed as it


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The world and its layer swap (bottom 2, top 2, transition 0), merged by hubswap in float32."""
    from hubswap.pipeline import BuildOptions, build

    root = tmp_path_factory.mktemp("world")
    out = write_world(root)
    recipe = write_recipe(root / "r.toml", {r: out[r] for r in ROLES}, bottom=2, top=2, transition=0)
    out["merged"] = build(recipe, BuildOptions(output=root / "build", evaluate=False, progress=False)).model_dir
    return out


def prompts(world, lang: str, limit: int):
    return build_prompts(load_language(str(world["mgsm"]), lang), "native-cot", num_fewshot=0, limit=limit)


def solved(world, model: str, lang: str, limit: int = 20, dtype: str = "float32") -> int:
    from hubswap.evaluate.backends import TransformersBackend

    ps = prompts(world, lang, limit)
    with TransformersBackend(world[model], batch_size=len(ps), dtype=dtype) as hf:
        gens = hf.generate(ps, max_new_tokens=8, progress=False)
    return sum(score_response(g.text, lang, p.gold).correct for g, p in zip(gens, ps, strict=True))


@pytest.mark.engine
def test_each_model_does_what_it_is_built_to_do(world):
    limit = 20
    assert [solved(world, "task", lang, limit) for lang in ("en", "sw")] == [limit, 0]
    assert [solved(world, "language", lang, limit) for lang in ("en", "sw")] == [0, 0]
    assert [solved(world, "merged", lang, limit) for lang in ("en", "sw")] == [limit, limit]
    assert solved(world, "merged", "sw", limit, dtype="bfloat16") == limit


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vllm_generates_the_same_tokens_as_transformers(world, vllm_cpu, dtype):
    """Greedy token ids of every model on 10 questions per language, both engines, one dtype."""
    from hubswap.evaluate.backends import TransformersBackend, VllmBackend

    ps = prompts(world, "en", 10) + prompts(world, "sw", 10)
    for model in ("base", "task", "language", "merged"):
        with TransformersBackend(world[model], batch_size=len(ps), dtype=dtype) as hf:
            want = [g.token_ids for g in hf.generate(ps, max_new_tokens=8, progress=False)]
        with VllmBackend(world[model], seed=0, dtype=dtype,
                         options={"kv_cache_memory_bytes": 32 << 20, "max_model_len": 128}) as engine:
            got = [g.token_ids for g in engine.generate(ps, max_new_tokens=8, progress=False)]
        assert got == want, model
        assert any(want), model
