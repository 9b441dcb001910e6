"""World v3 experiments (issue 18): standalone, small-scale, torch only.

Trains base -> task / language phases of a design, caches each phase's weights under
$TW3 (default /tmp/tw3), then measures sw/en accuracy of base, task, language and merged models
with greedy decoding on the first N questions of the synthetic MGSM, with the evaluation's own
prompts (hubswap.evaluate.prompts.build_prompts, 0-shot native-cot), stop strings and robust
scorer (hubswap.evaluate.scoring.score_response).

    PYTHONPATH=. python experiments/tiny_v3.py DESIGN [--n 100]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import torch

from hubswap.tinyworld.train import Design, Phase, make_tokenizer, model_config, train_phase

OUT = Path(os.environ.get("TW3", "/tmp/tw3"))


# -- evaluation ----------------------------------------------------------------------------------

_DATA = {}


def prompts(lang, n):
    from hubswap.evaluate.data import load_language
    from hubswap.evaluate.prompts import build_prompts
    from hubswap.tinyworld.mgsm import write_dataset
    if lang not in _DATA:
        root = write_dataset(OUT / "mgsm")
        _DATA[lang] = build_prompts(load_language(root, lang), "native-cot", num_fewshot=0)
    return _DATA[lang][:n]


@torch.no_grad()
def evaluate(model, tok, lang, n=100, max_new=72, show=0):
    from hubswap.evaluate.scoring import score_response
    ps = prompts(lang, n)
    tok.padding_side = "left"
    right, gens = 0, []
    for i in range(0, len(ps), 50):
        chunk = ps[i:i + 50]
        enc = tok([p.text for p in chunk], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=0, eos_token_id=2)
        for p, o in zip(chunk, out, strict=True):
            text = tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True)
            cut = min([text.find(s) for s in p.stop if s in text] or [len(text)])
            text = text[:cut]
            ok = score_response(text, lang, p.gold).correct
            right += ok
            gens.append((ok, text))
    for ok, t in gens[:show]:
        print(f"    [{'ok' if ok else '--'}] {t.strip()[:160]!r}")
    return right / len(ps)


def merge(task, language, bottom=2, top=2):
    """Layers < bottom and >= L-top, embeddings, final norm and lm_head from language; rest from task."""
    sd_t, sd_l = task.state_dict(), language.state_dict()
    n = task.config.num_hidden_layers
    out = {}
    for k in sd_t:
        m = re.match(r"model\.layers\.(\d+)\.", k)
        from_lang = m is None or int(m.group(1)) < bottom or int(m.group(1)) >= n - top
        out[k] = (sd_l if from_lang else sd_t)[k].clone()
    return out


def layer_change(expert, base):
    e, b = expert.state_dict(), base.state_dict()
    n = expert.config.num_hidden_layers
    res = []
    for i in range(n):
        ks = [k for k in b if k.startswith(f"model.layers.{i}.")]
        num = sum(float((e[k] - b[k]).pow(2).sum()) for k in ks) ** 0.5
        den = sum(float(b[k].pow(2).sum()) for k in ks) ** 0.5
        res.append(round(num / den, 3))
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        res.append(round(float((e[k] - b[k]).norm() / b[k].norm()), 3))
    return res


# -- designs -------------------------------------------------------------------------------------

BASE_WEAK = {"story_en": 0.22, "lookup_en": 0.15, "lookupm_en": 0.23, "copy_en": 0.10, "drill": 0.22,
             "story_sw": 0.05, "lookup_sw": 0.03}
TASK = {"problem_en": 0.85, "story_en": 0.15}
LANG = {"story_sw": 0.35, "lookup_sw": 0.10, "lookupm_sw": 0.15, "parallel": 0.25, "parallelqa": 0.05,
        "mixed": 0.10}
V3 = dict(hidden=128, heads=4, intermediate=256, seq_len=192, batch=16, tokenizer="spaced-digits",
          packing="documents")


def design(name, phases, **kw):
    return Design(name=name, phases=tuple(phases), **{**V3, **kw})


DESIGNS = {d.name: d for d in [
    design("A", [
        Phase("base", BASE_WEAK, steps=800, lr=3e-3, seed=1, lr_floor=0.1),
        Phase("task", TASK, steps=400, lr=2e-3, train="middle", init="base", seed=2, lr_floor=0.1),
        Phase("language", LANG, steps=400, lr=2e-3, train="outer", init="base", seed=3, lr_floor=0.1),
    ]),
    # A, cut to fit the time left on a shared machine (3 s/step for A with pytest running beside).
    design("A2", [
        Phase("base", BASE_WEAK, steps=500, lr=3e-3, seed=1, lr_floor=0.1),
        Phase("task", TASK, steps=300, lr=2e-3, train="middle", init="base", seed=2, lr_floor=0.1),
        Phase("language", LANG, steps=300, lr=2e-3, train="outer", init="base", seed=3, lr_floor=0.1),
    ], batch=12, seq_len=160),
    # A2's base; a task expert trained longer on the answers only; a gentler language expert.
    design("B", [
        Phase("base", BASE_WEAK, steps=500, lr=3e-3, seed=1, lr_floor=0.1),
        Phase("task", TASK, steps=600, lr=2e-3, train="middle", init="base", seed=2, lr_floor=0.1, loss="answer"),
        Phase("language", LANG, steps=300, lr=5e-4, train="outer", init="base", seed=3, lr_floor=0.1),
    ], batch=12, seq_len=160),
    # B's task expert trained 600 steps more; a language expert with more parallel text.
    design("C", [
        Phase("base", BASE_WEAK, steps=500, lr=3e-3, seed=1, lr_floor=0.1),
        Phase("task1", TASK, steps=600, lr=2e-3, train="middle", init="base", seed=2, lr_floor=0.1, loss="answer"),
        Phase("task", TASK, steps=600, lr=1e-3, train="middle", init="task1", seed=4, lr_floor=0.1, loss="answer"),
        Phase("language", {"story_sw": 0.20, "lookup_sw": 0.10, "lookupm_sw": 0.05, "parallel": 0.45,
                           "parallelqa": 0.15, "mixed": 0.05},
              steps=300, lr=5e-4, train="outer", init="base", seed=3, lr_floor=0.1),
    ], batch=12, seq_len=160),
    # C with a language expert at lr 1e-4: does a gentler change of the outer layers keep the
    # task expert's middle working?
    design("D", [
        Phase("base", BASE_WEAK, steps=500, lr=3e-3, seed=1, lr_floor=0.1),
        Phase("task1", TASK, steps=600, lr=2e-3, train="middle", init="base", seed=2, lr_floor=0.1, loss="answer"),
        Phase("task", TASK, steps=600, lr=1e-3, train="middle", init="task1", seed=4, lr_floor=0.1, loss="answer"),
        Phase("language", {"story_sw": 0.20, "lookup_sw": 0.10, "lookupm_sw": 0.05, "parallel": 0.45,
                           "parallelqa": 0.15, "mixed": 0.05},
              steps=300, lr=1e-4, train="outer", init="base", seed=3, lr_floor=0.1),
    ], batch=12, seq_len=160),
    design("smoke", [
        Phase("base", BASE_WEAK, steps=3, lr=3e-3, seed=1),
        Phase("task", TASK, steps=3, lr=2e-3, train="middle", init="base", seed=2, loss="answer"),
        Phase("language", LANG, steps=3, lr=2e-3, train="outer", init="base", seed=3),
    ], batch=2),
]}


def boundary_noise(model, sigma, bottom=2, top=2):
    """Training-time Gaussian noise (``sigma`` x each position's hidden-state std) on the residual
    stream where the swap cuts (after layer bottom-1 and after layer L-top-1): a block must keep
    working when the block below it writes slightly different features. ``NOISE=0``: none."""
    if not sigma:
        return []
    n = len(model.model.layers)

    def hook(mod, args, out):
        if mod.training:
            return out + sigma * out.std(-1, keepdim=True) * torch.randn_like(out)
        return out

    return [model.model.layers[i].register_forward_hook(hook) for i in (bottom - 1, n - top - 1)]


def key_of(d, name):
    """A phase's cache key: the model and data settings, the phase, and its init's key."""
    import dataclasses
    import hashlib
    ph = {p.name: p for p in d.phases}[name]
    parent = key_of(d, ph.init) if ph.init else repr(dataclasses.replace(d, name="", phases=(), notes=""))
    return hashlib.sha256((parent + repr(dataclasses.replace(ph, name=""))).encode()).hexdigest()[:10]


def run(name, n, only=None, show=3, upto=None):
    from transformers import LlamaForCausalLM
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.use_deterministic_algorithms(True)
    d = DESIGNS[name]
    tok = make_tokenizer(None, d.vocab_size, scheme=d.tokenizer)
    cfg = model_config(d, len(tok))
    OUT.mkdir(parents=True, exist_ok=True)

    def log(s):
        print(s, flush=True)

    need = None
    if upto:
        need = {upto, {p.name: p for p in d.phases}[upto].init}
    def chain(n):
        return chain(ph_by[n].init) | {n} if ph_by[n].init else {n}

    ph_by = {p.name: p for p in d.phases}
    if upto:
        need = chain(upto)
    models, rec = {}, {"design": name, "phases": {}}
    for p in d.phases:
        if need and p.name not in need:
            continue
        f = OUT / f"{p.name}-{key_of(d, p.name)}.pt"
        torch.manual_seed(p.seed)
        m = LlamaForCausalLM(cfg)
        if f.exists():
            blob = torch.load(f)
            m.load_state_dict(blob["state"])
            curve, secs = blob["curve"], blob["secs"]
            log(f"{p.name}: cached {f.name} ({secs:.0f}s, final loss {curve[-1][1]:.3f})")
        else:
            if p.init:
                m.load_state_dict(models[p.init].state_dict())
            log(f"{p.name}: training {p.steps} steps ({p.train})")
            t0 = time.time()

            def tick(step, elapsed, loss, p=p):
                if (step + 1) % 50 == 0:
                    log(f"  {p.name} step {step + 1}/{p.steps} loss {loss:.3f} ({elapsed:.0f}s)")

            hooks = boundary_noise(m, float(os.environ.get("NOISE", "0")))
            curve = train_phase(m, tok, d, p, progress=tick)
            for h in hooks:
                h.remove()
            secs = time.time() - t0
            torch.save({"state": m.state_dict(), "curve": curve, "secs": secs}, f)
        m.eval()
        models[p.name] = m
        rec["phases"][p.name] = {"secs": round(secs), "curve": curve[::max(1, len(curve) // 8)] + curve[-1:]}
    if upto:
        return None
    base = models["base"]
    rec["change"] = {r: layer_change(models[r], base) for r in ("task", "language") if r in models}
    for r, c in rec["change"].items():
        log(f"change {r}: {c}")
    merged = {}
    if "task" in models and "language" in models:
        for b, t in [(2, 2), (1, 1)]:
            mm = LlamaForCausalLM(cfg)
            mm.load_state_dict(merge(models["task"], models["language"], b, t))
            mm.eval()
            merged[f"merged{b}/{t}"] = mm
    evals = {}
    for r, m in {**models, **merged}.items():
        if only and r not in only:
            continue
        evals[r] = {}
        for lang in ("en", "sw"):
            t0 = time.time()
            evals[r][lang] = evaluate(m, tok, lang, n, show=show)
            log(f"{r:10s} {lang}: {evals[r][lang]:.2f}  ({time.time() - t0:.0f}s)")
    rec["acc"] = evals
    tag = "-".join(only).replace("/", "_") if only else "all"
    (OUT / f"result-{name}-{tag}.json").write_text(json.dumps(rec, indent=1))
    return rec


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("design")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--show", type=int, default=3)
    ap.add_argument("--upto", help="train (or load) this phase and its init only, then stop")
    a = ap.parse_args()
    run(a.design, a.n, a.only, a.show, a.upto)
