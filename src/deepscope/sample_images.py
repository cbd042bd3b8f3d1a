"""The built-in offline image set: real photos that ship inside installed dependencies.

scikit-image and matplotlib include a few photographs in their wheels; deepscope's default run
uses them, so it works on a machine without any data of its own.
"""

from __future__ import annotations

from pathlib import Path

from deepscope.errors import ImageError
from deepscope.images import ImageSet


def builtin_photo_paths() -> list[Path]:
    """Paths of the built-in photos (cat, coffee, astronaut, rocket, Grace Hopper) that are installed."""
    paths: list[Path] = []
    try:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        paths += [folder / name for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
    except ImportError:
        pass
    try:
        import matplotlib

        paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    except ImportError:
        pass
    return [p for p in paths if p.is_file()]


def builtin_images() -> ImageSet:
    """The built-in photos as an unlabelled :class:`ImageSet`."""
    paths = builtin_photo_paths()
    if not paths:
        raise ImageError("no built-in photos found (they come with scikit-image and matplotlib); pass an image folder.")
    return ImageSet(paths[0].parent, paths, [None] * len(paths), [None] * len(paths))
