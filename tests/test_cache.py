"""The one cache: keys, format, and an optional cache that heals itself.

Every kind of damage (truncated, empty, flipped bytes, wrong structure) to the entries of the `features`
command and of a small report makes the run warn, move the entry aside, recompute and finish; the next run
reads the recomputed entries without a warning. A cache location that is a file, cannot be written or is
full warns once and the run finishes without caching.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepscope import classify as classify_module
from deepscope import features as features_module
from deepscope import fileio
from deepscope.cache import Cache, CacheWarning, default_cache_dir, file_digest, images_digest, make_key
from deepscope.cli import main
from deepscope.features import FeatureBank

#: small runs: a small torchvision model with random weights, few neighbours, a small pixel space
FEATURES = ["--random-weights", "--knn", "2", "--queries", "1", "--project", "none", "--pixel-size", "8", "--quiet",
            "--force"]
REPORT = ["report", "--model", "mobilenet_v3_small", "--random-weights", "--sections", "model,features", "--quiet",
          "--force"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two class folders of three small photos, one broken file and one that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    for c, name in enumerate(("tench", "hen")):
        (root / name).mkdir()
        for i in range(3):
            rng = np.random.default_rng(10 * c + i)
            Image.fromarray((rng.random((40, 48, 3)) * 120 + 120 * c).astype(np.uint8)).save(root / name / f"{i}.png")
    (root / "hen" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "hen" / "notes.txt").write_text("not an image")
    return root


def command(kind: str, folder: Path, cache: Path, out: Path) -> list[str]:
    if kind == "features":
        return ["features", "mobilenet_v3_small", str(folder), *FEATURES, "--cache", str(cache), "--out", str(out)]
    return [*REPORT, "--images", str(folder), "--cache", str(cache), "--out", str(out)]


@pytest.fixture(scope="module")
def warm(folder, tmp_path_factory) -> dict[str, Path]:
    """A cache filled by one run of each command (copied by each test before it damages it)."""
    caches = {}
    for kind in ("features", "report"):
        cache = tmp_path_factory.mktemp(f"warm-{kind}")
        assert main(command(kind, folder, cache, tmp_path_factory.mktemp("out"))) == 0
        caches[kind] = cache
    return caches


@pytest.fixture
def passes(monkeypatch) -> list[str]:
    """Names of the passes over the images that ran (feature extraction, classification)."""
    ran = []
    for module in (features_module, classify_module):
        real = module.iter_batches

        def counting(*args, real=real, name=module.__name__, **kwargs):
            ran.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "iter_batches", counting)
    return ran


# ------------------------------------------------------------------------------------------ damage
def _largest_member_data(path: Path) -> tuple[int, int]:
    """Offset and size of the largest zip member's bytes in an entry."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(file.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_length) + int(extra_length), info.compress_size


def damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flipped":  # one byte inside the data (not in padding the reader never looks at)
        offset, size = _largest_member_data(path)
        flipped = bytearray(data)
        flipped[offset + size // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    elif kind == "structure":  # a readable file, not what the reader expects
        if path.suffix == ".npz":
            with open(path, "wb") as file:
                np.savez(file, features=np.zeros((2, 3), np.float32), paths=np.array(["elsewhere.png"]))
        else:
            torch.save({"kept": torch.zeros(3), "rows": "nonsense"}, path)
    else:
        raise ValueError(kind)


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.suffix in (".pt", ".npz"))


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning:" in line]


@pytest.mark.parametrize("kind", ["features", "report"])
@pytest.mark.parametrize("how", ["truncated", "empty", "flipped", "structure"])
def test_damaged_entries_are_moved_aside_and_recomputed(kind, how, folder, warm, tmp_path, capsys, passes):
    cache = tmp_path / "cache"
    shutil.copytree(warm[kind], cache)
    damaged = entries(cache)
    assert len(damaged) == (2 if kind == "features" else 3)  # features and pixels (and predictions)
    for path in damaged:
        damage(path, how)
    capsys.readouterr()

    assert main(command(kind, folder, cache, tmp_path / "out")) == 0
    err = capsys.readouterr().err
    lines = warnings_in(err)
    assert len(lines) == len(damaged) and all("damaged cache entry" in line for line in lines), err
    assert "Traceback" not in err and "broken.jpg" in err and "notes.txt" in err  # skips are still reported
    for path in damaged:
        assert path.with_name(path.name + ".damaged").is_file()  # kept for inspection, not deleted
    assert entries(cache) == damaged  # recomputed and stored again
    assert passes

    passes.clear()
    assert main(command(kind, folder, cache, tmp_path / "again")) == 0
    err = capsys.readouterr().err
    assert not warnings_in(err) and not passes, err  # the next run reads every recomputed entry
    assert "broken.jpg" in err  # the skips travel with the cached results


def unwritable(monkeypatch, cache: Path) -> None:
    """Make ``cache`` a folder nobody may write to (as root, refuse it the way the kernel would for others)."""
    cache.mkdir()
    cache.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: refuse files in the cache as EACCES would
        real = fileio.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).is_relative_to(cache):
                raise PermissionError(errno.EACCES, "Permission denied", str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)


def full(monkeypatch, cache: Path) -> None:
    """Every write to the cache fails as on a full disk."""
    real = fileio.atomic_path

    @contextlib.contextmanager
    def atomic_path(path):
        with real(path) as tmp:
            if Path(path).is_relative_to(cache):
                raise OSError(errno.ENOSPC, "No space left on device")
            yield tmp

    monkeypatch.setattr("deepscope.cache.atomic_path", atomic_path)


def a_file(monkeypatch, cache: Path) -> None:
    cache.write_text("a file, not a folder")


@pytest.mark.parametrize("kind", ["features", "report"])
@pytest.mark.parametrize("location", [a_file, unwritable, full], ids=["file", "unwritable", "full"])
def test_a_location_that_cannot_be_used_warns_once(kind, location, folder, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    location(monkeypatch, cache)
    try:
        assert main(command(kind, folder, cache, tmp_path / "out")) == 0
    finally:
        if cache.is_dir():
            cache.chmod(0o755)
    err = capsys.readouterr().err
    lines = warnings_in(err)
    assert len(lines) == 1 and "going on without caching" in lines[0] and str(cache) in lines[0], err
    assert "Traceback" not in err
    assert (tmp_path / "out" / ("features.npz" if kind == "features" else "report.html")).is_file()
    assert not entries(cache) if cache.is_dir() else cache.read_text() == "a file, not a folder"


# ------------------------------------------------------------------------------------------ library
def test_store_round_trip_layout_and_counts(tmp_path):
    cache = Cache(tmp_path)
    key = make_key("maps", 1, [2, "three"])
    assert len(key) == 64 and key != make_key("maps", 1, [2, "four"])
    value = {"map": torch.arange(6, dtype=torch.float16).view(2, 3), "signed": True, "rows": [{"a": 1.5}]}
    cache.save("maps", key, value)
    assert cache.path("maps", key) == tmp_path / "maps" / f"{key}.pt"
    stored = torch.load(cache.path("maps", key), weights_only=True)  # plain torch files, no pickles needed
    assert torch.equal(stored["map"], value["map"]) and stored["rows"] == value["rows"]
    cache.save("features", key, {"x": np.arange(3)}, arrays=True)
    with np.load(tmp_path / "features" / f"{key}.npz", allow_pickle=False) as data:
        assert data["x"].tolist() == [0, 1, 2]
    assert cache.load("maps", "0" * 64) is None and cache.load("maps", key)["signed"] is True
    assert (cache.hits, cache.misses) == (1, 1)
    computed = []
    assert cache.get_or_compute("maps", "1" * 64, lambda: computed.append(1) or {"v": 2}) == {"v": 2}
    assert cache.get_or_compute("maps", "1" * 64, lambda: computed.append(1) or {"v": 3}) == {"v": 2}
    assert computed == [1]
    assert not list(tmp_path.rglob("*.part*"))  # no temporary file left behind


def test_every_single_bit_flip_is_found_or_harmless(tmp_path):
    """torch.load does not check tensor data; the cache checks every zip member's CRC first."""
    cache = Cache(tmp_path)
    value = {"map": torch.linspace(0, 1, 64).view(8, 8), "signed": False}
    cache.save("maps", "k" * 64, value)
    path = cache.path("maps", "k" * 64)
    data = path.read_bytes()
    wrong, found = 0, 0
    for offset in range(0, len(data), 3):
        flipped = bytearray(data)
        flipped[offset] ^= 0x04
        path.write_bytes(bytes(flipped))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheWarning)
            loaded = Cache(tmp_path).load("maps", "k" * 64)
        found += loaded is None
        wrong += loaded is not None and not (torch.equal(loaded["map"], value["map"]) and loaded["signed"] is False)
    assert wrong == 0 and found > len(data) // 6  # the map's 256 bytes are most of the file


def test_reader_refusal_counts_as_damage(tmp_path):
    cache = Cache(tmp_path)
    cache.save("trust", "a" * 64, {"rows": 3})

    def read(value):
        if not isinstance(value["rows"], list):
            raise ValueError("rows should be a list")
        return value

    with pytest.warns(CacheWarning, match="ValueError: rows should be a list"):
        assert cache.load("trust", "a" * 64, read) is None
    assert (tmp_path / "trust" / f"{'a' * 64}.pt.damaged").is_file() and cache.misses == 1


def test_location_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSCOPE_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" and Cache.open(None).folder == tmp_path / "env"
    monkeypatch.delenv("DEEPSCOPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "deepscope" == Cache.open(True).folder
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "deepscope"
    assert Cache.open(False).folder is None and Cache.open(tmp_path / "x").folder == tmp_path / "x"
    shared = Cache(tmp_path)
    assert Cache.open(shared) is shared


def test_file_and_image_digests_follow_content(folder, tmp_path):
    from deepscope.images import scan_images

    photo = tmp_path / "p.png"
    shutil.copy(folder / "tench" / "0.png", photo)
    first = file_digest(photo)
    assert first == file_digest(photo) and file_digest(tmp_path / "missing.png") == "unreadable"
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(photo)
    assert file_digest(photo) != first
    images = scan_images(folder)
    assert images_digest(images) == images_digest(scan_images(folder))
    assert images_digest(images) != images_digest(images.subset(range(len(images) - 1)))


def test_feature_bank_entries_are_checked(tmp_path):
    bank = FeatureBank(torch.ones(2, 3), [Path("a.png"), Path("b.png")], [0, None], ["x", None], "fc:input", "m")
    arrays = bank.arrays()
    again = FeatureBank.from_arrays(arrays)
    assert torch.equal(again.features, bank.features) and again.labels == [0, None] and again.folders == ["x", None]
    with pytest.raises(ValueError, match="features of shape"):
        FeatureBank.from_arrays({**arrays, "features": np.ones((3, 3), np.float32)})
    with pytest.raises(KeyError):
        FeatureBank.from_arrays({k: v for k, v in arrays.items() if k != "paths"})
