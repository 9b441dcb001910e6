"""Run a GitHub Actions workflow's own steps on this machine, the way a runner would (like `act`,
without Docker), so a test can see a workflow work end to end.

What it does as Actions does:

- jobs in `needs` order; a job runs when its `if:` holds (default `success()`: every needed job
  succeeded), once per `strategy.matrix` entry (`include` lists, evaluated with `fromJSON`);
- steps in order; a step runs when its `if:` holds (default `success()`), a failed step fails the
  job, later steps run only if their `if:` allows it (`always()`, `!cancelled()`, `failure()`);
- `run:` scripts with `bash -e {0}` (`shell: bash` adds `--noprofile --norc -o pipefail`) in the
  workspace, with the job's and the step's `env:` over the runner's environment, and fresh
  `GITHUB_OUTPUT`, `GITHUB_ENV`, `GITHUB_PATH` and `GITHUB_STEP_SUMMARY` files per step, read back
  into `steps.<id>.outputs`, the environment of later steps, and the job summary;
- `${{ }}` expressions in `if:`, `env:`, `with:`, `environment:`, matrices and job outputs, over the
  contexts github, inputs, matrix, needs, steps, env, secrets (those of the job's environment),
  vars and runner. Anything this evaluator does not know raises, so a workflow cannot silently
  use a feature the test does not model.

What it replaces (a test names each one, and these stay untested):

- `uses:` actions, by Python stand-ins given per action (checkout: `git clean -ffdx` of the
  workspace, as actions/checkout does; upload-artifact: copy the matched files);
- steps whose `id` the test lists in `substitute` (the installs: no network here).

Runner placement (`runs-on`), concurrency, permissions, timeouts and reviewers are not modelled.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# --- expressions --------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<op>==|!=|<=|>=|&&|\|\||[!<>().,\[\]])"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))")
STATUS_FUNCTIONS = ("success", "failure", "always", "cancelled")


class ExpressionError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, Any]]:
    out, i = [], 0
    while i < len(text):
        if text[i:].strip() == "":
            break
        m = _TOKEN.match(text, i)
        if not m:
            raise ExpressionError(f"cannot read {text[i:]!r} in {text!r}")
        i = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "num":
            value = float(value) if "." in value else int(value)
        elif kind == "str":
            value = value[1:-1].replace("''", "'")
        out.append((kind, value))
    return out


def _loose(a, b) -> tuple[Any, Any]:
    """Actions compares strings case-insensitively and coerces other mixed types to numbers."""
    if isinstance(a, str) and isinstance(b, str):
        return a.lower(), b.lower()
    if type(a) is not type(b):
        def num(v):
            if v is None:
                return 0
            if isinstance(v, bool):
                return int(v)
            if isinstance(v, (int, float)):
                return v
            try:
                return float(v) if str(v).strip() else 0
            except ValueError:
                return float("nan")
        return num(a), num(b)
    return a, b


def _truthy(v) -> bool:
    return v not in (None, False, 0, "", 0.0)


def _to_string(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


class _Parser:
    def __init__(self, text: str, contexts: dict, functions: dict):
        self.text, self.toks, self.i = text, _tokens(text), 0
        self.contexts, self.functions = contexts, functions

    def parse(self):
        value = self.or_()
        if self.i != len(self.toks):
            raise ExpressionError(f"unexpected {self.toks[self.i][1]!r} in {self.text!r}")
        return value

    def peek(self, value=None):
        if self.i < len(self.toks) and (value is None or self.toks[self.i] == ("op", value)):
            return self.toks[self.i]
        return None

    def take(self, value):
        if not self.peek(value):
            raise ExpressionError(f"expected {value!r} in {self.text!r}")
        self.i += 1

    def or_(self):
        left = self.and_()
        while self.peek("||"):
            self.i += 1
            right = self.and_()
            left = left if _truthy(left) else right
        return left

    def and_(self):
        left = self.compare()
        while self.peek("&&"):
            self.i += 1
            right = self.compare()
            left = right if _truthy(left) else left
        return left

    def compare(self):
        left = self.unary()
        for op in ("==", "!=", "<=", ">=", "<", ">"):
            if self.peek(op):
                self.i += 1
                a, b = _loose(left, self.unary())
                return {"==": a == b, "!=": a != b, "<=": a <= b, ">=": a >= b, "<": a < b, ">": a > b}[op]
        return left

    def unary(self):
        if self.peek("!"):
            self.i += 1
            return not _truthy(self.unary())
        return self.primary()

    def primary(self):
        if self.i >= len(self.toks):
            raise ExpressionError(f"unexpected end of {self.text!r}")
        kind, value = self.toks[self.i]
        self.i += 1
        if kind in ("num", "str"):
            return value
        if (kind, value) == ("op", "("):
            inner = self.or_()
            self.take(")")
            return inner
        if kind != "name":
            raise ExpressionError(f"unexpected {value!r} in {self.text!r}")
        if value in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[value]
        if self.peek("("):
            self.i += 1
            args = []
            while not self.peek(")"):
                args.append(self.or_())
                if self.peek(","):
                    self.i += 1
            self.take(")")
            fn = self.functions.get(value.lower())
            if fn is None:
                raise ExpressionError(f"function {value}() is not modelled (in {self.text!r})")
            return fn(*args)
        if value not in self.contexts:
            raise ExpressionError(f"context {value!r} is not modelled (in {self.text!r})")
        current = self.contexts[value]
        while True:
            if self.peek("."):
                self.i += 1
                kind, key = self.toks[self.i]
                self.i += 1
                current = current.get(key) if isinstance(current, dict) else None
            elif self.peek("["):
                self.i += 1
                key = self.or_()
                self.take("]")
                current = current.get(key) if isinstance(current, dict) else None
            else:
                return current


def evaluate(expr: str, contexts: dict, status: dict[str, bool] | None = None):
    status = status or {}
    functions: dict[str, Callable] = {
        "fromjson": lambda s: json.loads(s),
        "tojson": lambda v: json.dumps(v, indent=2),
        "contains": lambda hay, needle: (needle in hay) if isinstance(hay, list)
        else str(needle).lower() in _to_string(hay).lower(),
        "startswith": lambda s, p: _to_string(s).lower().startswith(_to_string(p).lower()),
        "endswith": lambda s, p: _to_string(s).lower().endswith(_to_string(p).lower()),
        "format": lambda f, *a: re.sub(r"\{(\d+)\}", lambda m: _to_string(a[int(m.group(1))]), f),
    }
    for name in STATUS_FUNCTIONS:
        if name in status:
            functions[name] = (lambda v: lambda: v)(status[name])
    return _Parser(expr, contexts, functions).parse()


def interpolate(value, contexts: dict):
    """``${{ }}`` in a string (a whole-string expression keeps its type), recursively in lists/dicts."""
    if isinstance(value, dict):
        return {k: interpolate(v, contexts) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, contexts) for v in value]
    if not isinstance(value, str) or "${{" not in value:
        return value
    whole = re.fullmatch(r"\$\{\{(.*?)\}\}", value.strip(), re.S)
    if whole:
        return evaluate(whole.group(1), contexts)
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: _to_string(evaluate(m.group(1), contexts)), value, flags=re.S)


def condition(text, contexts: dict, status: dict[str, bool]) -> bool:
    """An `if:`: without a status function it means ``success() && (...)``, as in Actions."""
    if text is None:
        text = "success()"
    if isinstance(text, bool):
        text = "true" if text else "false"
    text = str(text).strip()
    whole = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.S)
    if whole:
        text = whole.group(1)
    if not re.search(r"\b(" + "|".join(STATUS_FUNCTIONS) + r")\s*\(", text):
        text = f"success() && ({text})"
    return _truthy(evaluate(text, contexts, status))


# --- files the runner hands to each step ----------------------------------------------------------


def parse_env_file(text: str) -> dict[str, str]:
    """`NAME=value` lines and `NAME<<DELIM` ... `DELIM` blocks (GITHUB_ENV and GITHUB_OUTPUT)."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            block = []
            while i < len(lines) and lines[i] != delim:
                block.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ValueError(f"unterminated {name}<<{delim} block")
            i += 1
            out[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        else:
            raise ValueError(f"cannot read {line!r}")
    return out


# --- the runner ---------------------------------------------------------------------------------


@dataclass
class StepResult:
    name: str
    id: str | None
    outcome: str
    """success, failure or skipped."""
    kind: str
    """run, uses or substituted."""
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    seconds: float = 0.0


@dataclass
class JobResult:
    job: str
    matrix: dict
    result: str
    """success, failure or skipped."""
    steps: list[StepResult] = field(default_factory=list)
    summary: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def step(self, name_or_id: str) -> StepResult:
        for s in self.steps:
            if name_or_id in (s.id, s.name):
                return s
        raise KeyError(name_or_id)

    def log(self) -> str:
        return "\n".join(f"[{s.outcome} {s.seconds:.1f} s] {s.name}\n{s.stdout}{s.stderr}" for s in self.steps)


Action = Callable[["Context", dict], None]


@dataclass
class Context:
    """What a `uses:` stand-in or a substitute gets: the workspace, the environment, the job."""

    workspace: Path
    env: dict[str, str]
    job: str
    step: dict


class WorkflowRunner:
    def __init__(self, workflow: Path, *, workspace: Path, runner_env: dict[str, str],
                 actions: dict[str, Action], substitute: dict[str, Action] | None = None,
                 secrets: dict[str | None, dict[str, str]] | None = None, github: dict | None = None,
                 inputs: dict | None = None, vars: dict | None = None):
        data = yaml.safe_load(Path(workflow).read_text())
        data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
        self.workflow = data
        self.workspace = Path(workspace)
        self.runner_env = dict(runner_env)
        self.actions = actions
        self.substitute = substitute or {}
        self.secrets = secrets or {}
        self.github = github or {}
        self.inputs = inputs or {}
        self.vars = vars or {}
        self.temp_root = Path(tempfile.mkdtemp(prefix="runner-", dir=self.runner_env.get("RUNNER_TEMP_ROOT")))

    def run(self, only: list[str] | None = None, needs: dict[str, dict] | None = None) -> dict[str, list[JobResult]]:
        """Every job in `needs` order (or only those named, with ``needs`` given as results)."""
        jobs = self.workflow["jobs"]
        done: dict[str, list[JobResult]] = {}
        given = needs or {}
        order = self._order(jobs) if only is None else only
        for job_id in order:
            job = jobs[job_id]
            needed = job.get("needs", [])
            needed = [needed] if isinstance(needed, str) else list(needed)
            needs_ctx = {}
            for n in needed:
                if n in given:
                    needs_ctx[n] = given[n]
                    continue
                results = done[n]
                outcome = "success" if all(r.result == "success" for r in results) else (
                    "skipped" if all(r.result == "skipped" for r in results) else "failure")
                merged: dict[str, str] = {}
                for r in results:
                    merged.update(r.outputs)
                needs_ctx[n] = {"result": outcome, "outputs": merged}
            done[job_id] = self._run_job(job_id, job, needs_ctx)
        return done

    @staticmethod
    def _order(jobs: dict) -> list[str]:
        order: list[str] = []
        pending = dict(jobs)
        while pending:
            ready = [j for j, spec in pending.items()
                     if all(n in order for n in ([spec["needs"]] if isinstance(spec.get("needs"), str)
                                                  else spec.get("needs", [])))]
            if not ready:
                raise ValueError(f"needs form a cycle among {sorted(pending)}")
            for j in ready:
                order.append(j)
                del pending[j]
        return order

    def _contexts(self, *, needs, matrix, env, steps, secrets) -> dict:
        return {
            "github": {"workspace": str(self.workspace), **self.github},
            "inputs": self.inputs, "matrix": matrix, "needs": needs, "steps": steps, "env": env,
            "secrets": secrets, "vars": self.vars, "strategy": {}, "job": {},
            "runner": {"temp": self.runner_env.get("RUNNER_TEMP", ""), "os": "Linux", "arch": "X64",
                       "name": self.runner_env.get("RUNNER_NAME", "")},
        }

    def _run_job(self, job_id: str, job: dict, needs: dict) -> list[JobResult]:
        deps_ok = all(n["result"] == "success" for n in needs.values())
        status = {"success": deps_ok, "failure": not deps_ok, "always": True, "cancelled": False}
        ctx = self._contexts(needs=needs, matrix={}, env={}, steps={}, secrets={})
        if not condition(job.get("if"), ctx, status):
            return [JobResult(job_id, {}, "skipped")]
        matrices = [{}]
        if "strategy" in job and "matrix" in job["strategy"]:
            spec = interpolate(job["strategy"]["matrix"], ctx)
            if set(spec) - {"include"}:
                raise ExpressionError(f"{job_id}: only `include` matrices are modelled")
            matrices = list(spec.get("include") or [])
        return [self._run_one(job_id, job, needs, m) for m in matrices]

    def _run_one(self, job_id: str, job: dict, needs: dict, matrix: dict) -> JobResult:
        ctx = self._contexts(needs=needs, matrix=matrix, env={}, steps={}, secrets={})
        environment = job.get("environment")
        if isinstance(environment, dict):
            environment = environment.get("name")
        environment = interpolate(environment, ctx)
        secrets = dict(self.secrets.get(None, {}))
        secrets.update(self.secrets.get(environment, {}))
        ctx["secrets"] = secrets
        temp = self.temp_root / f"{job_id}-{abs(hash(json.dumps(matrix, sort_keys=True)))}"
        temp.mkdir(parents=True)
        base = {**self.runner_env, "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(self.workspace),
                "GITHUB_JOB": job_id, "RUNNER_TEMP": str(temp)}
        base.update({f"GITHUB_{k.upper()}": _to_string(v) for k, v in self.github.items() if not isinstance(v, dict)})
        ctx["runner"]["temp"] = str(temp)
        job_env = {k: _to_string(interpolate(v, ctx)) for k, v in (job.get("env") or {}).items()}
        exported: dict[str, str] = {}
        result = JobResult(job_id, matrix, "success")
        steps_ctx: dict[str, dict] = {}
        failed = False
        for i, step in enumerate(job.get("steps", [])):
            status = {"success": not failed, "failure": failed, "always": True, "cancelled": False}
            env_ctx = {**job_env, **exported}
            ctx.update(env=env_ctx, steps=steps_ctx)
            name = step.get("name") or step.get("run", step.get("uses", f"step {i}")).splitlines()[0]
            sid = step.get("id")
            if not condition(step.get("if"), ctx, status):
                result.steps.append(StepResult(name, sid, "skipped", "skipped"))
                if sid:
                    steps_ctx[sid] = {"outcome": "skipped", "conclusion": "skipped", "outputs": {}}
                continue
            step_env = {k: _to_string(interpolate(v, ctx)) for k, v in (step.get("env") or {}).items()}
            files = {k: temp / f"{k.lower()}-{i}" for k in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH",
                                                             "GITHUB_STEP_SUMMARY")}
            for f in files.values():
                f.write_text("")
            env = {**base, **env_ctx, **step_env, **{k: str(v) for k, v in files.items()}}
            started = time.monotonic()
            sr = self._step(job_id, step, name, sid, env, ctx)
            sr.seconds = time.monotonic() - started
            result.steps.append(sr)
            outputs = parse_env_file(files["GITHUB_OUTPUT"].read_text())
            if sr.outcome == "success":
                exported.update(parse_env_file(files["GITHUB_ENV"].read_text()))
                for line in files["GITHUB_PATH"].read_text().splitlines():
                    if line.strip():
                        base["PATH"] = f"{line.strip()}{os.pathsep}{base.get('PATH', '')}"
            result.summary += files["GITHUB_STEP_SUMMARY"].read_text()
            if sid:
                steps_ctx[sid] = {"outcome": sr.outcome, "conclusion": sr.outcome, "outputs": outputs}
            if sr.outcome == "failure" and not step.get("continue-on-error"):
                failed = True
        result.result = "failure" if failed else "success"
        result.env = {**job_env, **exported}
        ctx.update(env=result.env, steps=steps_ctx)
        result.outputs = {k: _to_string(interpolate(v, ctx)) for k, v in (job.get("outputs") or {}).items()}
        return result

    def _step(self, job_id: str, step: dict, name: str, sid: str | None, env: dict, ctx: dict) -> StepResult:
        if sid in self.substitute:
            return self._call(self.substitute[sid], step, name, sid, env, job_id, "substituted", {})
        if "uses" in step:
            action = step["uses"].split("@", 1)[0]
            if action not in self.actions:
                raise ExpressionError(f"{job_id}: no stand-in for action {action}")
            with_ = {k: _to_string(interpolate(v, ctx)) for k, v in (step.get("with") or {}).items()}
            return self._call(self.actions[action], step, name, sid, env, job_id, "uses", with_)
        script = step["run"]
        shell = step.get("shell")
        if shell is None:
            argv = ["bash", "-e"]
        elif shell == "bash":
            argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
        else:
            raise ExpressionError(f"{job_id}: shell {shell!r} is not modelled")
        cwd = self.workspace / step.get("working-directory", ".")
        with tempfile.NamedTemporaryFile("w", suffix=".sh", dir=env["RUNNER_TEMP"], delete=False) as f:
            f.write(script)
        p = subprocess.run([*argv, f.name], cwd=cwd, env=env, capture_output=True, text=True)
        return StepResult(name, sid, "success" if p.returncode == 0 else "failure", "run", p.stdout, p.stderr,
                          p.returncode)

    def _call(self, fn: Action, step, name, sid, env, job_id, kind, with_) -> StepResult:
        try:
            fn(Context(self.workspace, env, job_id, {**step, "with": with_}), with_)
        except Exception as e:  # an action that fails fails its step
            return StepResult(name, sid, "failure", kind, "", f"{type(e).__name__}: {e}", 1)
        return StepResult(name, sid, "success", kind)
