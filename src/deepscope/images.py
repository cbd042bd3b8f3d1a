"""Image files to tensors: robust decoding, folder scanning and batched loading.

Every photo becomes an 8-bit RGB image: EXIF orientation is applied; grayscale, palette, RGBA (composited
on white), CMYK and 16-bit images are converted. A file that cannot be read raises :class:`ImageError`
naming the file; the batch loader skips such files, reports each by name, and keeps going.
"""

from __future__ import annotations

import io
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from deepscope.errors import DeepscopeError, ImageError, ImageTooLargeError
from deepscope.models.classes import ClassList

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
MIN_SIDE = 16
MAX_PIXELS = 120_000_000


def load_image(path: str | Path) -> Image.Image:
    """Decode one file into an upright 8-bit RGB image.

    Raises
    ------
    ImageError
        For missing, empty, corrupt, truncated, tiny (< 16 px) or huge (> 120 megapixel) files.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty.")
    return decode_image(path, str(path))


def decode_image(source: str | Path | bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a file or the bytes of one (an upload) into an upright 8-bit RGB image, with the loader's guards.

    The size is checked from the header before any pixel is decoded, and Pillow's decompression-bomb
    warning is an error, so a small file that claims a huge image is refused without being expanded.
    ``name`` starts every error message.

    Raises
    ------
    ImageError
        For data that is not an image, corrupt or truncated, tiny (< 16 px) or over ``max_pixels``.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{name}: the file is empty.")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                if opened.width * opened.height > max_pixels:
                    raise ImageTooLargeError(f"{name}: {opened.width}x{opened.height} px is too large "
                                     f"(over {max_pixels / 1_000_000:g} megapixels); downscale it first.")
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"{name}: refused as a decompression bomb ({error}).") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: corrupt or truncated image ({error}).") from None
    if min(image.size) < MIN_SIDE:
        raise ImageError(f"{name}: {image.width}x{image.height} px is too small; "
                         f"deepscope needs at least {MIN_SIDE} px on each side.")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (16-bit scaled down, transparency composited on white)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


@dataclass
class ImageSet:
    """The images of a folder, with their labels.

    Attributes
    ----------
    paths : list of Path
        Image files, sorted (class folder, then file name).
    folders : list of str or None
        Name of each file's class folder; None in a flat folder.
    labels : list of int or None
        Model class index of each file when its folder name is a WordNet id or class name.
    skipped : list of (Path, str)
        Files left out, with the reason; loaders append unreadable images here.
    """

    root: Path
    paths: list[Path]
    folders: list[str | None]
    labels: list[int | None]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and all(label is not None for label in self.labels)

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """The images at ``indices`` (in that order), sharing the skip list."""
        return ImageSet(self.root, [self.paths[i] for i in indices], [self.folders[i] for i in indices],
                        [self.labels[i] for i in indices], self.skipped)

    def skipped_summary(self) -> str:
        """One line per skipped file, or an empty string."""
        if not self.skipped:
            return ""
        lines = [f"skipped {len(self.skipped)} file(s):"] + [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def scan_images(root: str | Path, classes: ClassList | None = None) -> ImageSet:
    """List the images under ``root``: a single file, a flat folder, or one sub-folder per class.

    Class folders named by WordNet id (``n01440764``) or class name (``tench``) are mapped to the
    model's class indices through ``classes``. Files whose suffix is not an image's are skipped with a reason.
    """
    root = Path(root)
    if not root.exists():
        raise ImageError(f"{root}: no such file or folder.")
    if root.is_file():
        return ImageSet(root.parent, [root], [None], [None])
    paths, folders, skipped = [], [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((path, "not an image file (unknown extension)"))
            continue
        paths.append(path)
        folders.append(relative.parts[0] if len(relative.parts) > 1 else None)
    if not paths:
        raise ImageError(f"{root}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    labels = [folder_label(folder, classes) for folder in folders]
    return ImageSet(root, paths, folders, labels, skipped)


def folder_label(folder: str | None, classes: ClassList | None) -> int | None:
    """The class index a folder's name gives (a WordNet id or a class name), or None."""
    if folder is None or classes is None:
        return None
    try:
        return classes.index(folder)
    except DeepscopeError:
        return None


@dataclass
class Batch:
    """Preprocessed images and where they came from."""

    indices: list[int]       # positions in the ImageSet
    inputs: torch.Tensor      # (N, 3, H, W) model input
    labels: list[int | None]


def iter_batches(images: ImageSet, transform: Callable[[Image.Image], torch.Tensor], batch_size: int = 32,
                 *, progress: bool | str = False, workers: int = 2) -> Iterator[Batch]:
    """Decode and transform ``images`` in background threads and yield batches in order.

    Unreadable files are appended to ``images.skipped`` and left out of the batches.
    ``progress`` shows a progress bar (a string sets its label).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise DeepscopeError(f"batch_size must be at least 1, got {batch_size}.")

    def load(index: int) -> tuple[int, torch.Tensor | None]:
        try:
            return index, transform(load_image(images.paths[index]))
        except ImageError as error:
            images.skipped.append((images.paths[index], str(error).split(": ", 1)[-1]))
            return index, None

    bar = tqdm(total=len(images), desc=progress if isinstance(progress, str) else "images",
               disable=not progress, unit="img", leave=False)
    window = 2 * batch_size  # decoded-but-unbatched images held at most: memory stays bounded
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, bar:
        queue: deque = deque(pool.submit(load, i) for i in range(min(window, len(images))))
        next_index = len(queue)
        pending: list[tuple[int, torch.Tensor]] = []
        while queue:
            index, tensor = queue.popleft().result()
            if next_index < len(images):
                queue.append(pool.submit(load, next_index))
                next_index += 1
            bar.update(1)
            if tensor is not None:
                pending.append((index, tensor))
            if len(pending) == batch_size:
                yield _make_batch(pending, images)
                pending = []
        if pending:
            yield _make_batch(pending, images)


def _make_batch(items: list[tuple[int, torch.Tensor]], images: ImageSet) -> Batch:
    indices = [i for i, _ in items]
    return Batch(indices, torch.stack([t for _, t in items]), [images.labels[i] for i in indices])


def load_inputs(paths: Sequence[str | Path], transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """Load a few files into one (N, 3, H, W) batch; any unreadable file raises :class:`ImageError`."""
    return torch.stack([transform(load_image(p)) for p in paths])
