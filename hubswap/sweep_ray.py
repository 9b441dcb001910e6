"""``hubswap sweep --ray [ADDRESS]``: the configurations of a sweep as tasks on a Ray cluster.

The driver (the machine that runs ``hubswap sweep``) keeps everything that decides: it resolves
and preflights the recipe, evaluates both experts, splits the questions, ranks, scores the
winner's held-out half (as one more task), keeps the files and prints the summary, exactly as a
sweep on one machine (``sweeps.py``). Each configuration's merge and evaluation is one Ray task
(``score_on_node``), which asks for ``tensor_parallel_size`` GPUs on a GPU cluster and one CPU
otherwise. In the task, on whichever node runs it:

- the experts are fetched at the commits the driver resolved (the lock's) into that node's Hub
  cache, checked against their sha256: once per node, as every later task finds them there;
- the configuration is merged into scratch and evaluated by a ``ConfigScorer`` that the worker
  process keeps between tasks (on vLLM, one engine takes each configuration's weights in turn);
  its generations go into that node's evaluation cache, as on one machine;
- its verdicts, its cost and its per-question records come back to the driver.

A task whose worker dies (a node lost, the out-of-memory killer) is retried once by Ray
(``max_retries=1``); a configuration that fails twice, or raises, is reported by name once the
others are done, and nothing is written. Run again: every configuration whose generations are in
the cache of the node that takes it is not generated again (its merge is made again).

The Hub token of the driver (``HF_TOKEN`` or the one ``hf auth login`` stored) and
``HF_ENDPOINT`` travel to the tasks in the job's runtime environment; caches stay per node
(``HF_HOME``, ``HUBSWAP_CACHE``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path

from hubswap.errors import EvaluationError, HubswapError
from hubswap.sweep_eval import Config, ConfigScorer, Cost

log = logging.getLogger(__name__)

RAY_EXTRA = 'pip install "hubswap[ray]"'


def require_ray():
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise EvaluationError("--ray needs Ray, which is not installed", hint=RAY_EXTRA) from None
    return ray


class RayScorer:
    """Scores configurations as Ray tasks for the driver's ``ConfigScorer`` (its experts' verdicts,
    its eval folder): ``score_all`` and ``score`` as the scorer's, across the cluster."""

    def __init__(self, scorer: ConfigScorer, models: dict, address: str | None, *, progress: bool):
        self.ray = ray = require_ray()
        self.scorer, self.progress = scorer, progress
        env = {k: v for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE") if (v := os.environ.get(k))}
        token = _hub_token()
        if token:
            env["HF_TOKEN"] = token
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=address or None, runtime_env={"env_vars": env} if env else None,
                         logging_level=logging.WARNING, log_to_driver=True)
            except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
                first = str(e).strip().splitlines()
                raise EvaluationError(
                    f"cannot connect to the Ray cluster at {address or 'this machine'}: {first[-1] if first else e}",
                    hint="start one with `ray start --head` (docs/operations.md); a cluster with Ray's token "
                    "authentication needs its token here too (RAY_AUTH_TOKEN)") from None
        resources = ray.cluster_resources()
        cfg = scorer.cfg
        tp = int(cfg.vllm.get("tensor_parallel_size", 1)) if cfg.backend == "vllm" else 1
        self.resources = {"num_gpus": tp} if resources.get("GPU", 0) > 0 else {"num_cpus": 1}
        log.info("Ray cluster: %d node(s), %s; each configuration asks for %s", len(ray.nodes()),
                 ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU")),
                 ", ".join(f"{v} {k.removeprefix('num_')}" for k, v in self.resources.items()))
        self.context = ray.put({
            "base": scorer.base, "pre": scorer.pre, "models": {r: models[r] for r in scorer.dirs},
            "keys": scorer.keys, "cfg": cfg, "dataset": scorer.dataset, "limit": scorer.limit, "keep": scorer.keep,
            "shard": scorer.shard, "scratch": str(scorer.scratch.resolve()), "n": scorer.n,
            "sweep": uuid.uuid4().hex,
        })
        self.task = ray.remote(score_on_node).options(max_retries=1, retry_exceptions=False, **self.resources)

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()

    def score_all(self, configs: list[Config], questions: list[int]) -> dict[str, Cost]:
        return self._run([(c, questions, c.name) for c in configs])

    def score(self, c: Config, questions: list[int], name: str) -> Cost:
        return self._run([(c, questions, name)])[c.name]

    def _run(self, jobs: list[tuple[Config, list[int], str]]) -> dict[str, Cost]:
        """Every job as a task; the verdicts, records and costs of those that finish; one error
        naming every configuration that failed."""
        from tqdm.auto import tqdm

        ray = self.ray
        pending = {self.task.remote(self.context, c, q, name): (c, q, name) for c, q, name in jobs}
        costs: dict[str, Cost] = {}
        failed: dict[str, str] = {}
        with tqdm(total=len(jobs), desc="configurations", unit="config", disable=not self.progress) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                c, questions, name = pending.pop(done[0])
                try:
                    got = ray.get(done[0])
                except ray.exceptions.RayError as e:
                    failed[name] = _reason(e)
                    log.error("%s failed on the cluster: %s", name, failed[name])
                else:
                    self._keep(c, questions, got)
                    costs[c.name] = got["cost"]
                    log.info("%s: merge %.1f s, evaluation %.1f s on %d questions (node %s)", name,
                             got["cost"].merge_s, got["cost"].eval_s, len(questions), got["node"][:8])
                bar.update(1)
        if failed:
            raise EvaluationError(
                f"{len(failed)} of {len(jobs)} configurations failed on the Ray cluster (a task whose worker died "
                "was retried once): " + "; ".join(f"{n}: {why}" for n, why in failed.items()),
                hint="run the sweep again: configurations already evaluated come from the nodes' caches")
        return costs

    def _keep(self, c: Config, questions: list[int], got: dict) -> None:
        """A task's verdicts into the driver's scorer, its records into the sweep's eval folder."""
        v = self.scorer.verdicts.setdefault(c.name, [None] * self.scorer.n)
        for i, ok in zip(questions, got["verdicts"], strict=True):
            v[i] = ok
        for file, text in got["files"].items():
            (self.scorer.eval_dir / file).write_text(text, encoding="utf-8")


def _reason(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, HubswapError):
        return str(cause)
    first = str(e).strip().splitlines()
    return f"{type(e).__name__}: {first[0] if first else ''}"


def _hub_token() -> str | None:
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return get_token()


# --- on the nodes -----------------------------------------------------------------------------------

_scorers: dict[tuple, ConfigScorer] = {}  # per worker process: one scorer per sweep and device set


def score_on_node(context: dict, c: Config, questions: list[int], name: str) -> dict:
    """The Ray task: merge ``c`` on this node and evaluate it as ``name`` on ``questions``."""
    import ray

    devices = os.environ.get("CUDA_VISIBLE_DEVICES")  # what Ray gave this task
    key = (context["sweep"], devices)
    scorer = _scorers.get(key)
    if scorer is None:
        for old in _scorers.values():
            old.close()
        _scorers.clear()
        # The experts at the driver's commits, into this node's Hub cache (a no-op once there).
        dirs = {role: context["models"][role].folder() for role in context["keys"]}
        eval_dir = Path(tempfile.mkdtemp(prefix="hubswap-sweep-eval-"))
        scorer = ConfigScorer(context["base"], context["pre"], dirs, context["keys"], context["cfg"], eval_dir,
                              Path(context["scratch"]), dataset=context["dataset"], limit=context["limit"],
                              keep=context["keep"], max_shard_size=context["shard"], progress=False,
                              devices=devices)
        scorer.n = context["n"]
        _scorers[key] = scorer
    cost = scorer.score(c, questions, name)
    v = scorer.verdicts[c.name]
    files = {}
    for lang in scorer.cfg.languages:
        f = scorer.eval_dir / f"{name}.{lang}.jsonl"
        files[f.name] = f.read_text(encoding="utf-8")
    return {"verdicts": [v[i] for i in questions], "cost": cost, "files": files,
            "node": ray.get_runtime_context().get_node_id()}
