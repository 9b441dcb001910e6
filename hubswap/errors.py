"""One exception hierarchy for everything a user can get wrong.

The CLI turns a ``HubswapError`` into one line (plus an optional hint) and an exit code; any
other exception is a bug and keeps its traceback. Messages never contain a token.
"""

from __future__ import annotations

from dataclasses import dataclass


class HubswapError(Exception):
    """A user-facing failure: printed as one line with a hint, never with a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class RecipeProblem:
    """One problem in a recipe, located at ``file:line`` and a dotted key."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class RecipeError(HubswapError):
    """The recipe is malformed; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[RecipeProblem]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"recipe has {n} problem{'s' if n != 1 else ''}:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class IncompatibleModelsError(HubswapError):
    """The experts (or the base) cannot be layer-swapped; lists every mismatch."""

    exit_code = 3

    def __init__(self, mismatches: list[str], *, hint: str | None = None):
        self.mismatches = list(mismatches)
        n = len(self.mismatches)
        head = f"models are not compatible ({n} mismatch{'es' if n != 1 else ''}):"
        super().__init__(
            "\n".join([head, *(f"  - {m}" for m in self.mismatches)]),
            hint=hint or "layer swapping needs two fine-tunes of the same base model",
        )


class UnsafeWeightsError(HubswapError):
    """Only safetensors weights are accepted; pickled checkpoints can run arbitrary code."""

    exit_code = 3


class ModelFilesError(HubswapError):
    """A model folder or repo lacks files the build needs, or they are corrupt."""

    exit_code = 3


class HubError(HubswapError):
    """A Hub call failed in a way the user can fix (access, missing repo, network, token)."""

    exit_code = 4


class LockMismatchError(HubswapError):
    """The lock file no longer matches the recipe."""

    exit_code = 2


class LicenseConflictError(HubswapError):
    """The parents' licences differ, or the recipe's contradicts them, and the recipe did not
    acknowledge it (hubswap.licenses)."""

    exit_code = 2


class PublishRefusedError(HubswapError):
    """Publishing would overwrite something by surprise."""

    exit_code = 5


class GateFailedError(HubswapError):
    """The merged model did not pass the recipe's gate; nothing was published."""

    exit_code = 6


class EvaluationError(HubswapError):
    """Evaluation could not run (missing dataset, engine not installed, ...)."""

    exit_code = 7


class DiskSpaceError(HubswapError):
    """Not enough free disk space for what is about to be written, or the disk filled up meanwhile.

    ``file`` and ``errno`` are the file whose write found the disk full and the error it got (None
    for a refusal before writing), so that an enclosing ``durable.disk_full_is_an_error`` can say it
    of the folder the user named rather than of a staging folder inside it.
    """

    exit_code = 8

    def __init__(self, message: str, *, hint: str | None = None, file: str | None = None, errno: int | None = None):
        super().__init__(message, hint=hint)
        self.file, self.errno = file, errno


class BuildBusyError(HubswapError):
    """Another build is writing the same build folder."""

    exit_code = 9


class VerifyFailedError(HubswapError):
    """`hubswap verify`: the rebuild differs from the published files, or cannot be made from the Hub."""

    exit_code = 10


class NotWritableError(HubswapError):
    """A folder hubswap must write to cannot be written: a read-only filesystem, or no permission."""

    exit_code = 11


# Every exit code of `hubswap`, the one place they are stated: `hubswap --help` prints this table,
# and tests/test_readme.py checks that the README's "Errors and exit codes" table says the same and
# that each class above carries one of these codes (0 and 130 belong to no class).
EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "error",
    2: "bad recipe or lock, or a licence the parents contradict",
    3: "incompatible, unsafe or corrupt models",
    4: "Hub error",
    5: "publish refused",
    6: "gate failed",
    7: "evaluation error",
    8: "not enough disk space (before writing, or the disk filled up)",
    9: "another build is writing the same build folder",
    10: "verify: the rebuild differs from the published files, or cannot be made from the Hub",
    11: "a folder cannot be written (read-only filesystem, no permission)",
    130: "interrupted (Ctrl-C)",
}
