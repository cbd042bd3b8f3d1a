"""The photos an explorer serves: those of the folder it was started on, and those dropped into the page.

A client names a photo only by its id (``f12``: the 13th photo of the folder; ``u3``: the 4th upload), never
by a path, so no request can make the server read a file outside the served folder: ids are looked up in a
table the server built itself. Uploads are checked before anything is stored (size, declared type, then a
full decode with the loader's guards, :func:`deepscope.images.decode_image`) and kept in a private temporary
folder that is removed when the server stops. A future results store (``--store``) is one more source of
photos: it fills the same table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from deepscope.errors import DeepscopeError, ImageError, ImageTooLargeError
from deepscope.images import ImageSet, decode_image, folder_label

#: content types accepted for uploads, and the suffix the stored file gets
UPLOAD_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
                "image/bmp": ".bmp", "image/tiff": ".tiff"}
#: longest display name kept from an uploaded file's name
MAX_NAME = 120


class UnknownPhotoError(DeepscopeError):
    """A photo id the server does not know."""


class UploadError(DeepscopeError):
    """An upload that was refused; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be: bytes, decoded pixels, and how many uploads a server keeps."""

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_uploads: int = 200


@dataclass(frozen=True)
class Photo:
    """One photo: its id (the only name a client uses), a display name, and where the server reads it.

    ``path`` never leaves the server; ``name`` is shown as text only.
    """

    id: str
    name: str
    path: Path
    folder: str | None = None
    label: int | None = None
    source: str = "folder"

    def describe(self) -> dict:
        """What a client may know about the photo."""
        return {"id": self.id, "name": self.name, "folder": self.folder, "source": self.source}


def display_name(name: str) -> str:
    """An uploaded file's name made safe to show: the last path part, no control characters, bounded length."""
    name = re.split(r"[\\/]", name or "")[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[:MAX_NAME] or "upload"


class PhotoLibrary:
    """The photos of the folder, then the uploads, each by id.

    Parameters
    ----------
    images : ImageSet
        The served folder (or the built-in photos).
    limits : UploadLimits
    """

    def __init__(self, images: ImageSet, limits: UploadLimits = UploadLimits()):
        self.images = images
        self.limits = limits
        self._photos: dict[str, Photo] = {}
        for i, (path, folder, label) in enumerate(zip(images.paths, images.folders, images.labels)):
            self._photos[f"f{i}"] = Photo(f"f{i}", Path(path).name, Path(path), folder, label, "folder")
        self._uploads: dict[str, str] = {}  # content digest -> photo id
        self._upload_dir: Path | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._photos)

    def list(self) -> list[Photo]:
        with self._lock:
            return list(self._photos.values())

    def get(self, photo_id: str) -> Photo:
        """The photo called ``photo_id``; an :class:`UnknownPhotoError` (never a file lookup) otherwise."""
        with self._lock:
            photo = self._photos.get(photo_id) if isinstance(photo_id, str) else None
        if photo is None:
            raise UnknownPhotoError(f"unknown photo {str(photo_id)[:60]!r}; the page lists the photos by id.")
        return photo

    def label_with(self, classes) -> None:
        """Give each folder photo the class its folder names (a WordNet id or class name of ``classes``), once the
        model's classes are known."""
        with self._lock:
            for photo_id, photo in self._photos.items():
                if photo.source == "folder" and photo.folder is not None:
                    self._photos[photo_id] = dataclasses.replace(photo, label=folder_label(photo.folder, classes))

    def by_path(self) -> dict[Path, Photo]:
        return {photo.path: photo for photo in self.list()}

    def image_set(self) -> ImageSet:
        """Every photo (folder, then uploads) as an :class:`ImageSet`, in id order."""
        photos = self.list()
        return ImageSet(self.images.root, [p.path for p in photos], [p.folder for p in photos],
                        [p.label for p in photos])

    def add_upload(self, data: bytes, name: str, content_type: str) -> Photo:
        """Check an upload, store it privately and give it an id (the same bytes twice: the same photo).

        Raises
        ------
        UploadError
            415 for a type that is not an image's or data that does not decode, 413 for too many bytes or
            pixels, 429 when the server already holds ``limits.max_uploads`` uploads.
        """
        name = display_name(name)
        suffix = UPLOAD_TYPES.get(content_type)
        if suffix is None:
            raise UploadError(f"upload {name!r}: type {content_type[:60]!r} is not accepted; send one of "
                              f"{', '.join(UPLOAD_TYPES)}.", 415)
        if len(data) > self.limits.max_bytes:
            raise UploadError(f"upload {name!r}: {len(data) / 1e6:.1f} MB is over the limit of "
                              f"{self.limits.max_bytes / 1e6:.0f} MB.", 413)
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._uploads.get(digest)
            if known is not None:
                return self._photos[known]
            if len(self._uploads) >= self.limits.max_uploads:
                raise UploadError(f"upload {name!r}: this server already holds {len(self._uploads)} uploads, its "
                                  "limit; restart it to start afresh.", 429)
        try:
            decode_image(data, f"upload {name!r}", max_pixels=self.limits.max_pixels)
        except ImageTooLargeError as error:
            raise UploadError(str(error), 413) from None
        except ImageError as error:
            raise UploadError(str(error), 415) from None
        with self._lock:
            if digest in self._uploads:
                return self._photos[self._uploads[digest]]
            if self._upload_dir is None:
                self._upload_dir = Path(tempfile.mkdtemp(prefix="deepscope-uploads-"))
            photo_id = f"u{len(self._uploads)}"
            path = self._upload_dir / f"{photo_id}{suffix}"
            path.write_bytes(data)
            photo = Photo(photo_id, name, path, None, None, "upload")
            self._photos[photo_id] = photo
            self._uploads[digest] = photo_id
        return photo

    def close(self) -> None:
        """Remove the uploads' folder."""
        with self._lock:
            if self._upload_dir is not None:
                shutil.rmtree(self._upload_dir, ignore_errors=True)
                self._upload_dir = None
