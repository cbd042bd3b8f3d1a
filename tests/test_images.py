"""The image loader: every odd file is converted or reported by name; nothing stops a run."""

import numpy as np
import pytest
import torch
from PIL import Image

from deepscope.errors import ImageError
from deepscope.images import iter_batches, load_image, scan_images
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
    skipped = {p.name: reason for p, reason in images.skipped}
    assert set(skipped) == {"notes.txt", "truncated.jpg", "empty.png", "fake.jpg", "tiny.png"}
    assert "truncated" in skipped["truncated.jpg"] and "empty" in skipped["empty.png"]
    assert "too small" in skipped["tiny.png"]
    assert "tiny.png" in images.skipped_summary()


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
