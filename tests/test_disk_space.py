"""A disk too small, or one that fills up, on real small filesystems (tmpfs mounts).

Each test mounts a tmpfs of a few MB (as root, or through passwordless sudo as on GitHub's
runners; elsewhere the tests skip and say why, and on CI such a skip is a failure). No function is patched: the kernel answers ENOSPC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hubswap.demo import make_family
from tests.support.cli import hubswap_argv, hubswap_env, run_hubswap
from tests.support.recipes import write_recipe

# Module fixtures that make models with torch: their users are `engine` (tests/conftest.py).
ENGINE_FIXTURES = {"medium"}

REPO = Path(__file__).resolve().parent.parent


def _as_root(cmd: list[str]) -> list[str]:
    """``cmd`` as root: as it is when the tests run as root (.ci/run), else through passwordless
    ``sudo -n`` (GitHub's hosted runners)."""
    return cmd if os.geteuid() == 0 or shutil.which("sudo") is None else ["sudo", "-n", *cmd]


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size)``: a fresh tmpfs of that size (``mount -o size=``), owned by the user running
    the tests, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        d = tmp_path / f"tmpfs-{len(mounted)}"
        d.mkdir()
        opts = f"size={size},uid={os.getuid()},gid={os.getgid()},mode=0755"
        r = subprocess.run(_as_root(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)]), capture_output=True, text=True)
        if r.returncode:  # a failure on CI (tests/conftest.py): ci.yml runs them with sudo
            pytest.skip(f"cannot mount a {size} tmpfs to fill up ({r.stderr.strip() or r.returncode}): "
                        "these tests need root or passwordless sudo")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(_as_root(["umount", "-l", str(d)]), check=False)


def _errors(stderr: str) -> list[str]:
    lines = [line.rsplit("\r", 1)[-1] for line in stderr.splitlines()]
    return [line for line in lines if line.startswith(("error:", "hint:", "Traceback"))]


def _fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until its filesystem is full."""
    filler = folder / "filler"
    # Unbuffered: a buffered file keeps what the full disk refused and raises ENOSPC again when it
    # closes (the likely cause of a bare OSError seen once in about 18 runs on a loaded machine).
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError as e:
            assert e.errno == 28, e
    return filler


def test_a_model_that_does_not_fit_is_refused_before_anything_is_written(tiny_llama, small_fs, tmp_path):
    disk = small_fs("512k")
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama)
    r = run_hubswap("build", str(recipe), "--no-eval", "-o", str(disk / "build"))
    assert r.returncode == 8, r.stderr
    error = _errors(r.stderr)
    assert len(error) == 2, r.stderr
    assert error[0].startswith("error: the merged model needs ") and f" in {disk / 'build'}, but its filesystem has " in error[0]
    assert error[1].startswith("hint: free some space, or write elsewhere (build: --output")
    assert os.listdir(disk) == []


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> dict[str, Path]:
    """A 16-layer model of ~46M parameters (177 MB in fp32): its bf16 merge takes seconds."""
    return make_family(tmp_path_factory.mktemp("medium"), num_layers=16, hidden=512, vocab_size=8192,
                       max_shard_size="50MB")


def test_the_disk_filling_up_during_the_merge_is_one_line_and_leaves_nothing(medium, small_fs, tmp_path):
    disk = small_fs("160m")  # room for the 89 MB bf16 model, which a filler takes away mid-merge
    recipe = write_recipe(tmp_path / "r.toml", medium, dtype="bfloat16")
    out = disk / "build"
    proc = subprocess.Popen(hubswap_argv("build", recipe, "--no-eval", "-o", out), env=hubswap_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(s.stat().st_size for s in out.glob(".model.partial-*/model-*.safetensors")):
        assert proc.poll() is None, f"the merge ended before the disk was filled: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    filler = _fill(disk)  # another process takes the space the merge counted on
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 8, err
    error = _errors(err)
    assert error[0] == f"error: no space left on device in {out} while writing the build", err
    assert error[1].startswith("hint: nothing was left half-written"), err
    assert sorted(os.listdir(out)) == [".hubswap.lock"]  # no model, no staging folder

    filler.unlink()
    again = run_hubswap("build", str(recipe), "--no-eval", "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert (out / "model" / "model.safetensors.index.json").is_file()


def test_a_full_disk_on_a_record_written_in_the_staging_folder_is_said_of_the_build_folder(small_fs):
    """CI saw the merge finish before the filler took the disk, and the build record's write fail:
    "no space left on device in <build>/.model.partial-<pid>/hubswap while writing lock.json", a
    staging folder the user never named (and gone by the time it is read). A file written inside
    the build is said of the build, as the merge's shards are."""
    from hubswap.durable import disk_full_is_an_error
    from hubswap.errors import DiskSpaceError
    from hubswap.files import atomic_write

    disk = small_fs("1m")
    build, elsewhere = disk / "build", disk / "cache"
    (build / ".model.partial-1" / "hubswap").mkdir(parents=True)
    elsewhere.mkdir()
    filler = _fill(disk)
    with pytest.raises(DiskSpaceError) as inside, disk_full_is_an_error(build, "the build"):
        atomic_write(build / ".model.partial-1" / "hubswap" / "lock.json", "{}" * 4096)
    assert str(inside.value) == f"no space left on device in {build} while writing the build"
    assert inside.value.exit_code == 8 and inside.value.hint.startswith("nothing was left half-written")
    assert os.listdir(build / ".model.partial-1" / "hubswap") == []  # its temporary file is gone
    with pytest.raises(DiskSpaceError) as outside, disk_full_is_an_error(build, "the build"):
        atomic_write(elsewhere / "x.json", "{}" * 4096)  # a folder elsewhere keeps its own words
    assert str(outside.value) == f"no space left on device in {elsewhere} while writing x.json"
    filler.unlink()


def test_a_full_disk_while_writing_the_card_keeps_the_old_card(tiny_llama, small_fs, tmp_path):
    """`hubswap card` writes the layer-map picture, then README.md: the disk is filled so that the
    picture fits exactly and README.md is the write that fails. The old README stays whole (never
    truncated in place), and no temporary file is left in any folder of the model."""
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama)
    built = tmp_path / "build"
    assert run_hubswap("build", str(recipe), "--no-eval", "-o", str(built)).returncode == 0
    disk = small_fs("8m")
    model = Path(shutil.copytree(built / "model", disk / "model"))
    picture = model / "hubswap" / "layer_map.svg"
    svg = picture.read_bytes()  # what `card` writes again: the records are the same
    picture.unlink()
    (model / "README.md").write_text("an older card\n")
    page = os.statvfs(disk).f_bsize
    filler = _fill(disk)
    assert os.statvfs(disk).f_bavail == 0
    os.truncate(filler, filler.stat().st_size - -(-len(svg) // page) * page)  # room for the picture only
    assert os.statvfs(disk).f_bavail * page == -(-len(svg) // page) * page

    r = run_hubswap("card", str(model))
    assert r.returncode == 8, r.stderr
    error = _errors(r.stderr)
    assert error[0] == f"error: no space left on device in {model} while writing README.md", r.stderr
    assert error[1].startswith("hint: nothing was left half-written"), r.stderr
    assert (model / "README.md").read_text() == "an older card\n"  # never half a card
    assert picture.read_bytes() == svg  # the picture, written first, is whole
    left = [os.path.join(d, f) for d, _, files in os.walk(model) for f in files if f.endswith(".tmp")]
    assert not left, left  # in model/, model/hubswap/ or anywhere under them
    assert sorted(os.listdir(model / "hubswap")) == sorted(os.listdir(built / "model" / "hubswap"))


def test_downloads_that_do_not_fit_the_hub_cache_are_refused_before_fetching(hub, tiny_llama, small_fs, tmp_path):
    cache = small_fs("512k")
    recipe = write_recipe(tmp_path / "merge.toml", {"task": "org/task", "language": "org/language"}, name="hub-disk")
    hub.upload_folder("org/task", tiny_llama["task"])
    hub.upload_folder("org/language", tiny_llama["language"])
    r = run_hubswap("build", str(recipe), "--no-eval", "-o", str(tmp_path / "build"), cwd=tmp_path,
             env={"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache / "hub")})
    whole = [p for m, p, rng in hub.requests if m == "GET" and p.endswith(".safetensors") and rng is None]
    assert r.returncode == 8, r.stderr
    error = _errors(r.stderr)
    assert error[0].startswith("error: downloading ") and "of org/task@main (" in error[0], r.stderr
    assert f" in {cache / 'hub'}, but its filesystem has " in error[0], r.stderr
    assert not whole, f"weights downloaded: {whole}"
    assert not (tmp_path / "build" / "model").exists()
