"""Durable builds: every file and folder of the model reaches the disk before the rename that
publishes it, and the rename itself after. Seen from outside, in the system calls the build makes
(strace), not by patching os.fsync."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import hubswap_argv, hubswap_env
from tests.support.filesystems import onto
from tests.support.recipes import write_recipe

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("fs", ["here", pytest.param("xfs", marks=pytest.mark.mounts)])
def test_every_output_is_fsynced_before_the_rename_that_publishes_it(request, tiny_llama, tmp_path, fs):
    """Also where the merge clones (XFS with reflink): a shard made of cloned blocks is synced as
    one that was written, in the same order."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    where = tmp_path
    if fs != "here":
        where = request.getfixturevalue("filesystems")(fs)
        tiny_llama = onto(where, tiny_llama)
    recipe = write_recipe(where / "r.toml", tiny_llama, dtype="float32")  # tensors taken whole: cloned on XFS
    out, log = where / "build", tmp_path / "strace.log"
    cmd = [strace, "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o", str(log),
           *hubswap_argv("build", recipe, "--no-eval", "-o", out)]
    cmd[-4:-4] = ["--max-shard-size", "200KB"]  # several shards
    r = subprocess.run(cmd, env=hubswap_env(), capture_output=True, text=True, timeout=300)
    if r.returncode and "ptrace" in r.stderr:
        pytest.skip(f"strace cannot trace here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()

    published = next(i for i, c in enumerate(calls)
                     if re.search(r"rename\w*\(.*\.model\.partial-\d+\".*\"" + re.escape(str(out / "model")) + '"', c))
    stage = re.search(r'"([^"]*\.model\.partial-\d+)"', calls[published]).group(1)
    synced_before = {m.group(1) for c in calls[:published] if (m := re.search(r"fsync\(\d+<([^>]*)>", c))}
    model = out / "model"
    outputs = [p.relative_to(model) for p in model.rglob("*")]
    assert len([p for p in outputs if str(p).endswith(".safetensors")]) > 1
    for rel in outputs:  # every file and folder, weights, index, side files, records and card
        assert f"{stage}/{rel}" in synced_before, f"{rel} was not fsynced before the model was published"
    assert stage in synced_before
    # The shards were sent to the disk by the merge's own sync thread as they were written (so the
    # write-back overlaps the merge; bench/ measures by how much), each before the final fsync.
    main_pid = calls[published].split()[0]
    for shard in (p for p in outputs if str(p).endswith(".safetensors")):
        path = re.escape(f"{stage}/{shard}")
        synced = [i for i, c in enumerate(calls) if re.search(rf"fdatasync\(\d+<{path}>", c)]
        final = next(i for i, c in enumerate(calls) if re.search(rf"^{main_pid}\s+fsync\(\d+<{path}>", c))
        assert synced and synced[0] < final, f"{shard} was not synced during the merge"
        assert all(calls[i].split()[0] != main_pid for i in synced)  # by the sync thread
    after = [m.group(1) for c in calls[published + 1:] if (m := re.search(r"fsync\(\d+<([^>]*)>", c))]
    assert str(out) in after  # the build folder, which holds the new name
    cloned = json.loads((model / "hubswap" / "lock.json").read_text())["output"]["merge"]["cloned"]
    assert cloned > 0 or fs == "here"
