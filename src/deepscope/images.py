"""Image files to tensors: robust decoding, folder scanning, batched loading and photos decoded once.

Every photo becomes an 8-bit RGB image: EXIF orientation is applied; grayscale, palette, RGBA (composited
on white), CMYK and 16-bit images are converted. A file that cannot be read raises :class:`ImageError`
naming the file; the batch loader skips such files and keeps going, and each batch carries the files it
skipped, so whatever is built from the batches (predictions, feature banks) can say which files it lacks.

Passes over a whole folder stream it in batches (:func:`iter_batches`); the few photos a run shows or
explains are decoded once and kept as crops and thumbnails (:class:`Photos`).
"""

from __future__ import annotations

import io
import warnings
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from deepscope.errors import AmbiguousClassError, DeepscopeError, DeepscopeWarning, ImageError, ImageTooLargeError
from deepscope.fileio import display_path, is_existing_file
from deepscope.models.classes import ClassList
from deepscope.models.preprocess import Preprocess

#: a file left out, and why
Skip = tuple[Path, str]

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
    if not is_existing_file(path):
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


@dataclass(frozen=True)
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
    skipped : tuple of (Path, str)
        Files the scan left out (not images), with the reason. Files that cannot be decoded are found
        later, by each pass over the images: they travel with its batches and results.
    """

    root: Path
    paths: list[Path]
    folders: list[str | None]
    labels: list[int | None]
    skipped: tuple[Skip, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "skipped", tuple(self.skipped))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and all(label is not None for label in self.labels)

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """The images at ``indices`` (in that order), with the scan's skips."""
        return ImageSet(self.root, [self.paths[i] for i in indices], [self.folders[i] for i in indices],
                        [self.labels[i] for i in indices], self.skipped)


def merge_skips(*groups: Iterable[Skip]) -> list[Skip]:
    """The skips of several passes over the same files, each file once (first reason kept), in order."""
    merged: dict[Path, str] = {}
    for group in groups:
        for path, reason in group:
            merged.setdefault(Path(path), reason)
    return list(merged.items())


def describe_skipped(skipped: Sequence[Skip]) -> str:
    """One line per skipped file under a heading, or an empty string; file names made safe for a terminal."""
    if not skipped:
        return ""
    lines = [f"skipped {len(skipped)} file(s):"] + [f"  {display_path(path)}: {reason}" for path, reason in skipped]
    return "\n".join(lines)


def draw_per_group(groups: Sequence[tuple[int, Hashable]], per_group: int, seed: int = 0,
                   limit: int | None = None) -> list[int]:
    """Draw ``per_group`` items of each group with a generator seeded by ``seed``.

    ``groups`` pairs each item (a position) with its group. Groups follow their first appearance; within a
    group the drawn items keep their order. At most ``limit`` items are returned (the first ones).
    """
    members: dict[Hashable, list[int]] = {}
    for item, group in groups:
        members.setdefault(group, []).append(item)
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for items in members.values():
        order = torch.randperm(len(items), generator=generator)[:per_group].tolist()
        chosen += sorted(items[j] for j in order)
    return chosen if limit is None else chosen[:limit]


def evenly_spaced(count: int, k: int | None) -> list[int]:
    """``k`` positions spread evenly over ``range(count)``, the first included (all of them when ``k`` is None or
    at least ``count``): a share of a per-class selection that still covers its classes."""
    if k is None or k >= count:
        return list(range(count))
    return [i * count // k for i in range(max(k, 0))]


def scan_images(root: str | Path, classes: ClassList | None = None) -> ImageSet:
    """List the images under ``root``: a single file, a flat folder, or one sub-folder per class.

    Class folders named by WordNet id (``n01440764``) or class name (``tench``) are mapped to the
    model's class indices through ``classes``. Files whose suffix is not an image's are skipped with a reason.
    """
    root = Path(root)
    try:
        found = root.exists()
    except OSError:  # a name the file system cannot hold
        found = False
    if not found:
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
    known = {folder: folder_label(folder, classes) for folder in dict.fromkeys(folders)}
    return ImageSet(root, paths, folders, [known[folder] for folder in folders], skipped)


def folder_label(folder: str | None, classes: ClassList | None) -> int | None:
    """The class a folder is named after (a WordNet id or a class name); None for other names (a warning when
    the name fits several classes)."""
    if folder is None or classes is None:
        return None
    try:
        return classes.index(folder)
    except AmbiguousClassError as error:
        warnings.warn(f"the images in folder {display_path(folder)!r} have no label: {error} "
                      "Rename the folder to the class's WordNet id.", DeepscopeWarning, stacklevel=3)
        return None
    except DeepscopeError:
        return None


@dataclass
class Batch:
    """Preprocessed images, where they came from, and the files skipped since the previous batch.

    The last batch also carries the files skipped after its images; when no file could be read, a single
    batch without images (``inputs`` empty) carries them all.
    """

    indices: list[int]       # positions in the ImageSet
    inputs: torch.Tensor      # (N, 3, H, W) model input
    labels: list[int | None]
    skipped: list[Skip] = field(default_factory=list)


def iter_batches(images: ImageSet, transform: Callable[[Image.Image], torch.Tensor], batch_size: int = 32,
                 *, progress: bool | str = False, workers: int = 2) -> Iterator[Batch]:
    """Decode and transform ``images`` in background threads and yield batches in order.

    Unreadable files are left out of the batches; each batch lists those skipped before it (and the last one
    those after it), so a pass sees every skip once. ``progress`` shows a progress bar (a string sets its label).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise DeepscopeError(f"batch_size must be at least 1, got {batch_size}.")

    def load(index: int) -> tuple[int, torch.Tensor | str]:
        try:
            return index, transform(load_image(images.paths[index]))
        except ImageError as error:
            return index, str(error).split(": ", 1)[-1]

    bar = tqdm(total=len(images), desc=progress if isinstance(progress, str) else "images",
               disable=not progress, unit="img", leave=False)
    window = 2 * batch_size  # decoded-but-unbatched images held at most: memory stays bounded
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, bar:
        queue: deque = deque(pool.submit(load, i) for i in range(min(window, len(images))))
        next_index = len(queue)
        pending: list[tuple[int, torch.Tensor]] = []
        skipped: list[Skip] = []
        full: Batch | None = None  # held until the next readable image: skips after the last image join it
        while queue:
            index, result = queue.popleft().result()
            if next_index < len(images):
                queue.append(pool.submit(load, next_index))
                next_index += 1
            bar.update(1)
            if isinstance(result, str):
                skipped.append((images.paths[index], result))
                continue
            if full is not None:
                yield full
                full = None
            pending.append((index, result))
            if len(pending) == batch_size:
                full, pending, skipped = _make_batch(pending, images, skipped), [], []
        if pending:
            if full is not None:
                yield full
            yield _make_batch(pending, images, skipped)
        elif full is not None:
            full.skipped += skipped
            yield full
        elif skipped:
            yield Batch([], torch.empty(0), [], skipped)


def _make_batch(items: list[tuple[int, torch.Tensor]], images: ImageSet, skipped: list[Skip]) -> Batch:
    indices = [i for i, _ in items]
    return Batch(indices, torch.stack([t for _, t in items]), [images.labels[i] for i in indices], skipped)


def load_inputs(paths: Sequence[str | Path] | str | Path,
                transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """Load a few files (or one) into one (N, 3, H, W) batch; any unreadable file raises :class:`ImageError`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DeepscopeError("load_inputs needs at least one image file.")
    return torch.stack([transform(load_image(p)) for p in paths])


def thumbnail(image: Image.Image, size: int) -> np.ndarray:
    """A centre-cropped ``size x size`` uint8 RGB array of a decoded image."""
    return np.asarray(ImageOps.fit(image, (size, size)))


class Photos:
    """Photos decoded at most once each: their model-size crops and thumbnails, kept for a run.

    Parameters
    ----------
    preprocess : Preprocess, optional
        Makes the crops (:meth:`crops`); without it only thumbnails are kept.
    thumbnail_sizes : sequence of int
        Thumbnail sides made at each decode (:meth:`thumbnail`); a thumbnail of another side decodes again.

    Attributes
    ----------
    decoded : int
        Files decoded so far.
    """

    def __init__(self, preprocess: Preprocess | None = None, thumbnail_sizes: Sequence[int] = (96,)):
        self.preprocess = preprocess
        self.thumbnail_sizes = tuple(thumbnail_sizes)
        self.decoded = 0
        self._crops: dict[Path, torch.Tensor] = {}
        self._thumbnails: dict[tuple[Path, int], np.ndarray] = {}
        self._errors: dict[Path, ImageError] = {}

    def _decode(self, path: Path, sizes: Sequence[int]) -> None:
        if path in self._errors:
            raise self._errors[path]
        try:
            image = load_image(path)
        except ImageError as error:
            self._errors[path] = error
            raise
        self.decoded += 1
        if self.preprocess is not None:
            self._crops[path] = self.preprocess.crop_bytes(image)
        for size in sizes:
            self._thumbnails[path, size] = thumbnail(image, size)

    def readable(self, paths: Sequence[str | Path]) -> list[int]:
        """Positions in ``paths`` of the files that can be read (each decoded now, once); the others are
        listed in :attr:`skipped`."""
        kept = []
        for i, path in enumerate(Path(p) for p in paths):
            if path not in self._crops and (path, self.thumbnail_sizes[0]) not in self._thumbnails:
                try:
                    self._decode(path, self.thumbnail_sizes)
                except ImageError:
                    continue
            kept.append(i)
        return kept

    @property
    def skipped(self) -> list[Skip]:
        """The files that could not be read so far, and why."""
        return [(path, str(error).split(": ", 1)[-1]) for path, error in self._errors.items()]

    def crops(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """The ``(N, 3, S, S)`` [0, 1] crops the model sees (``preprocess.crop``) of ``paths``.

        Raises
        ------
        ImageError
            For a file that cannot be read.
        """
        if self.preprocess is None:
            raise ValueError("Photos without a preprocess make no crops")
        paths = [Path(p) for p in paths]
        for path in paths:
            if path not in self._crops:
                self._decode(path, self.thumbnail_sizes)
        return torch.stack([TF.to_dtype(self._crops[p], torch.float32, scale=True) for p in paths])

    def thumbnail(self, path: str | Path, size: int | None = None) -> np.ndarray:
        """A centre-cropped ``size x size`` (default: the first of ``thumbnail_sizes``) uint8 RGB array of the
        whole photo; mid-grey for a file that cannot be read."""
        path, size = Path(path), size or self.thumbnail_sizes[0]
        if (path, size) not in self._thumbnails:
            try:
                self._decode(path, [size] if path in self._crops or self.preprocess is None else
                             sorted({size, *self.thumbnail_sizes}))
            except ImageError:
                return np.full((size, size, 3), 128, dtype=np.uint8)
        return self._thumbnails[path, size]
