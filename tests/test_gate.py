"""The gate at its edges: a tie passes, a hair below fails, and a model that was not evaluated
(a must_beat model, or the merged model in the target language) fails with a reason naming it."""

from __future__ import annotations

import pytest

from hubswap.evaluate import apply_gate
from hubswap.evaluate.results import (
    EvalResults,
    Hardware,
    LanguageScores,
    ModelResult,
    ScoreMethods,
    Settings,
)
from hubswap.evaluate.stats import wilson_interval
from hubswap.recipe import Gate

SETTINGS = Settings(
    dataset="juletxara/mgsm", dataset_revision="main", dataset_revisions={"sw": "main", "en": "main"},
    hub_dataset="juletxara/mgsm", languages=["sw", "en"], target_language="sw", prompt="native",
    num_fewshot=8, fewshot_seed=1234, max_new_tokens=512, backend="vllm", dtype="bfloat16", batch_size=None,
    limit=100, questions={"sw": 100, "en": 100}, seed=0, greedy=True, vllm=None, vllm_cpu_defaults=None,
    scores=ScoreMethods(accuracy="robust", strict_match="lm-eval", flexible_extract="lm-eval", ci95="Wilson",
                        comparison_ci95="Newcombe", target_language_share="lingua"),
)


def _results(merged: dict[str, float], share: float | None = 1.0, **others: dict[str, float]) -> EvalResults:
    """Typed results with the given accuracies per model and language, on 100 questions each, and
    ``share`` of every model's answers written in the question's language."""
    def model(langs: dict[str, float]) -> ModelResult:
        def scores(acc: float) -> LanguageScores:
            k = round(acc * 100)
            return LanguageScores(n=100, correct=k, accuracy=acc, ci95=wilson_interval(k, 100), strict_match=acc,
                                  flexible_extract=acc, truncation_rate=0.0, no_answer_rate=0.0,
                                  mean_generated_tokens=40.0, target_language_share=share)
        return ModelResult(source="org/model@" + "0" * 40, cache_key=None, cached=False, cached_languages=[],
                           engine=None, languages={lang: scores(acc) for lang, acc in langs.items()})

    return EvalResults(
        settings=SETTINGS, versions={}, comparisons={}, reference_model="merged",
        hardware=Hardware(device="cuda", gpu="NVIDIA H200", gpu_count=1, cpu="x86_64", cpu_count=16,
                          platform="Linux"),
        models={"merged": model(merged), **{name: model(langs) for name, langs in others.items()}},
    )


@pytest.mark.parametrize(("merged", "task", "margin"), [
    (0.40, 0.38, 0.02),  # 0.38 + 0.02 == 0.4 in floating point too
    (0.30, 0.10, 0.20),  # 0.1 + 0.2 == 0.30000000000000004 > 0.3: still a tie
    (0.37, 0.37, 0.0),
])
def test_a_tie_with_another_model_plus_the_margin_passes(merged, task, margin):
    verdict = apply_gate(_results({"sw": merged}, task={"sw": task}), Gate(must_beat=["task"], margin=margin))
    assert verdict.passed, verdict.reasons
    bound = f"task {100 * task:.1f}%" + (f" +{100 * margin:.1f} points" if margin else "")
    assert verdict.checks[0] == f"merged {100 * merged:.1f}% >= {bound} (n=100)"


def test_a_hair_below_the_margin_fails():
    verdict = apply_gate(_results({"sw": 0.39}, task={"sw": 0.38}), Gate(must_beat=["task"], margin=0.02))
    assert not verdict.passed
    assert verdict.reasons == ["merged 39.0% < task 38.0% +2.0 points (n=100)"]


def test_min_accuracy_is_met_on_a_tie_and_missed_below():
    assert apply_gate(_results({"sw": 0.3}), Gate(must_beat=[], min_accuracy=0.1 + 0.2)).passed
    low = apply_gate(_results({"sw": 0.29}), Gate(must_beat=[], min_accuracy=0.3))
    assert not low.passed and low.reasons == ["merged 29.0% < min_accuracy 30.0%"]


def test_a_must_beat_model_that_was_not_evaluated_fails():
    gate = Gate(must_beat=["task", "language"])
    # not evaluated at all, and evaluated but not in the target language
    for results in (_results({"sw": 0.9}, task={"sw": 0.1}),
                    _results({"sw": 0.9}, task={"sw": 0.1}, language={"en": 0.1})):
        verdict = apply_gate(results, gate)
        assert not verdict.passed
        assert verdict.reasons == ["language was not evaluated in sw, so merged cannot be shown to beat it"]
        assert verdict.checks[0].startswith("merged 90.0% >= task 10.0%")  # the other checks still made


def test_a_merged_model_without_a_result_in_the_target_language_fails():
    for results in (_results({"en": 0.9}, task={"sw": 0.1, "en": 0.1}),
                    _results({"sw": 0.9}).model_copy(update={"reference_model": "model"})):  # no such model
        verdict = apply_gate(results, Gate(must_beat=["task"], min_accuracy=0.0))
        assert not verdict.passed
        name = results.reference_model
        assert verdict.reasons == [f"{name} was not evaluated in sw"]
        assert verdict.accuracy is None
        assert "gate failed" in str(verdict.error())


def test_the_answers_language_gates_only_when_asked():
    # 0.1 + 0.2 as a bound: a tie with the share passes
    assert apply_gate(_results({"sw": 0.5}, share=0.3), Gate(must_beat=[], min_target_language_share=0.1 + 0.2)).passed
    low = apply_gate(_results({"sw": 0.5}, share=0.29), Gate(must_beat=[], min_target_language_share=0.3))
    assert not low.passed
    assert low.reasons == ["merged answers in sw: 29.0% < min_target_language_share 30.0%"]
    record = low.record()
    assert (record.min_target_language_share, record.target_language_share) == (0.3, 0.29)
    unasked = apply_gate(_results({"sw": 0.5}, share=0.0), Gate(must_beat=[]))
    assert unasked.passed and not any("language_share" in c for c in unasked.checks)


def test_answers_without_words_fail_a_language_gate():
    verdict = apply_gate(_results({"sw": 0.5}, share=None), Gate(must_beat=[], min_target_language_share=0.5))
    assert verdict.reasons == ["merged wrote no sw answer with words, so its answers' language cannot be judged"]


def test_the_recipe_key_is_a_share_between_0_and_1(tmp_path):
    from hubswap.errors import RecipeError
    from hubswap.recipe import parse_recipe
    from tests.support.fixed_build import RECIPE

    loaded = parse_recipe(RECIPE + "\n[gate]\nmin_target_language_share = 0.9\n", tmp_path / "r.toml")
    assert loaded.recipe.gate.min_target_language_share == 0.9
    assert parse_recipe(RECIPE, tmp_path / "r.toml").recipe.gate.min_target_language_share is None
    with pytest.raises(RecipeError, match="min_target_language_share"):
        parse_recipe(RECIPE + "\n[gate]\nmin_target_language_share = 1.5\n", tmp_path / "r.toml")
