"""The image loader: every odd file is converted or reported by name; nothing stops a run."""

import numpy as np
import pytest
import torch
from PIL import Image

from deepscope.errors import ImageError
from deepscope.images import describe_skipped, iter_batches, load_image, scan_images
from deepscope.models.classes import imagenet_classes
from deepscope.models.preprocess import Preprocess


@pytest.fixture
def messy_folder(tmp_path):
    """Class folders (by wnid and by name) holding good, odd and broken files."""
    rng = np.random.default_rng(0)
    tench, horn = tmp_path / "n01440764", tmp_path / "French horn"
    tench.mkdir(), horn.mkdir()
    rgb = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    rgb.save(tench / "good.jpg")
    rgb.convert("L").save(tench / "gray.png")
    rgb.convert("P").save(tench / "palette.gif")
    rgb.convert("RGBA").save(horn / "rgba.png")
    rgb.convert("CMYK").save(horn / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16)).save(horn / "sixteen.png")
    data = (tench / "good.jpg").read_bytes()
    (tench / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tench / "empty.png").write_bytes(b"")
    (horn / "notes.txt").write_text("not an image")
    (horn / "fake.jpg").write_text("not a jpeg either")
    Image.new("RGB", (5, 3)).save(horn / "tiny.png")
    return tmp_path


def test_scan_maps_folder_names_to_class_indices(messy_folder):
    images = scan_images(messy_folder, imagenet_classes())
    labels = {p.name: label for p, label in zip(images.paths, images.labels)}
    assert labels["good.jpg"] == 0 and labels["rgba.png"] == 566
    assert [p.name for p, _ in images.skipped] == ["notes.txt"]


def test_loader_converts_odd_modes_and_skips_broken_files_by_name(messy_folder):
    images = scan_images(messy_folder, imagenet_classes())
    batches = list(iter_batches(images, Preprocess(32, 32), batch_size=3))
    loaded = [images.paths[i].name for b in batches for i in b.indices]
    assert sorted(loaded) == sorted(["good.jpg", "gray.png", "palette.gif", "rgba.png", "cmyk.jpg", "sixteen.png"])
    assert all(b.inputs.shape[1:] == (3, 32, 32) for b in batches)
    found = [*images.skipped, *(skip for b in batches for skip in b.skipped)]  # each file once
    skipped = dict((p.name, reason) for p, reason in found)
    assert len(found) == len(skipped) and set(skipped) == {"notes.txt", "truncated.jpg", "empty.png", "fake.jpg", "tiny.png"}
    assert "truncated" in skipped["truncated.jpg"] and "empty" in skipped["empty.png"]
    assert "too small" in skipped["tiny.png"]
    assert "tiny.png" in describe_skipped(found)
    assert [p.name for p, _ in images.skipped] == ["notes.txt"]  # the loader leaves the image set as it was


def test_conversions_are_correct(tmp_path):
    gray = Image.fromarray(np.full((20, 20), 100, dtype=np.uint8))
    gray.save(tmp_path / "g.png")
    assert np.asarray(load_image(tmp_path / "g.png"))[0, 0].tolist() == [100, 100, 100]
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    transparent.save(tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(tmp_path / "s.png")
    assert np.asarray(load_image(tmp_path / "s.png"))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="no image files"):
        scan_images(tmp_path)


def test_preprocess_round_trip():
    prep = Preprocess(8, 8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    pixels = torch.rand(2, 3, 8, 8)
    assert torch.allclose(prep.denormalize(prep.normalize(pixels)), pixels, atol=1e-6)


def _flat(tmp_path, names):
    """A flat folder: ``*.png`` names are small photos, the others broken files."""
    tmp_path.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        if name.endswith(".png"):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / name)
        else:
            (tmp_path / name).write_bytes(b"broken")
    return scan_images(tmp_path)


def test_each_batch_carries_the_files_skipped_before_it_and_the_last_those_after(tmp_path):
    images = _flat(tmp_path, ["a0.jpg", "a1.png", "a2.png", "a3.jpg", "a4.png", "a5.jpg"])
    batches = list(iter_batches(images, Preprocess(16, 16), batch_size=2, workers=3))
    assert [b.indices for b in batches] == [[1, 2], [4]]
    assert [[p.name for p, _ in b.skipped] for b in batches] == [["a0.jpg"], ["a3.jpg", "a5.jpg"]]
    # a full batch followed only by unreadable files still carries them
    [batch] = iter_batches(_flat(tmp_path / "t", ["b0.png", "b1.png", "b2.jpg"]), Preprocess(16, 16), batch_size=2)
    assert batch.indices == [0, 1] and [p.name for p, _ in batch.skipped] == ["b2.jpg"]
    # nothing readable: one batch without images carries every skip
    [empty] = iter_batches(_flat(tmp_path / "n", ["c0.jpg", "c1.jpg"]), Preprocess(16, 16))
    assert empty.indices == [] and empty.inputs.numel() == 0 and len(empty.skipped) == 2


def test_the_image_set_is_not_changed_by_passes(tmp_path):
    import dataclasses

    images = _flat(tmp_path, ["a0.jpg", "a1.png", "notes.txt"])
    list(iter_batches(images, Preprocess(16, 16)))
    assert images.skipped == ((tmp_path / "notes.txt", "not an image file (unknown extension)"),)
    assert images.subset([0]).skipped == images.skipped
    with pytest.raises(dataclasses.FrozenInstanceError):
        images.skipped = ()


def test_photos_are_decoded_once(tmp_path, monkeypatch):
    from PIL import ImageOps

    from deepscope import images as images_module
    from deepscope.errors import ImageError
    from deepscope.images import Photos

    images = _flat(tmp_path, ["a.png", "b.png", "c.jpg"])
    decoded = []
    real = images_module.load_image
    monkeypatch.setattr(images_module, "load_image", lambda path: decoded.append(path.name) or real(path))
    preprocess = Preprocess(16, 18)
    photos = Photos(preprocess, thumbnail_sizes=(12, 5))
    crops = photos.crops(images.paths[:2])
    assert torch.equal(crops, torch.stack([preprocess.crop(real(p)) for p in images.paths[:2]]))  # bit for bit
    assert np.array_equal(photos.thumbnail(images.paths[0]), np.asarray(ImageOps.fit(real(images.paths[0]), (12, 12))))
    photos.thumbnail(images.paths[1], 5)
    photos.crops(images.paths[1::-1])
    assert decoded == ["a.png", "b.png"] and photos.decoded == 2
    assert photos.thumbnail(images.paths[2]).tolist() == np.full((12, 12, 3), 128).tolist()  # unreadable: grey
    with pytest.raises(ImageError, match="c.jpg"):
        photos.crops(images.paths[2:])
    assert decoded.count("c.jpg") == 1  # a failure is remembered too
    photos.thumbnail(images.paths[0], 7)  # a size not made at the first decode: decoded again
    assert decoded.count("a.png") == 2


def test_draw_per_group():
    from deepscope.images import draw_per_group

    groups = [(0, "a"), (1, "b"), (2, "a"), (3, "a"), (4, "b"), (5, "c")]
    drawn = draw_per_group(groups, 2, seed=0)
    assert len(drawn) == 5 and set(drawn[:2]) <= {0, 2, 3} and drawn[:2] == sorted(drawn[:2])
    assert drawn[2:4] == [1, 4] and drawn[4:] == [5]                         # groups in order of first appearance
    assert draw_per_group(groups, 2, seed=0) == drawn and draw_per_group(groups, 2, 0, limit=3) == drawn[:3]
    assert len({tuple(draw_per_group(groups, 1, seed)) for seed in range(10)}) > 1
