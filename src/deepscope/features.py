"""The feature space: feature banks, nearest neighbours, kNN accuracy and 2-D projections.

A :class:`FeatureBank` holds one vector per image: a layer's activation, global-average-pooled when it
is a convolutional map (``(N, C, H, W)`` -> ``(N, C)``; ViT-style ``(N, T, D)`` tokens are averaged),
or, for comparison, the preprocessed pixels themselves (:func:`pixel_bank`). The default layer is the
input of the classifier's last ``nn.Linear`` (``"classifier.1:input"`` for torchvision's MobileNet-V2,
``"classifier.6:input"`` = fc7 for AlexNet/VGG, ``"fc:input"`` for a ResNet): the penultimate features
of Krizhevsky et al. 2012, whose neighbours share a class far more often than pixel neighbours do.

Layer names are module names (``features.18``: that module's output) or ``NAME:input`` (the module's
first input, captured with a forward pre-hook).

Caching
-------
Banks are entries of kind ``features`` in :class:`deepscope.cache.Cache` (``cache=``: a folder, a Cache, None
or True for the default location, False for none); see :mod:`deepscope.cache` for the location and how a
damaged entry or an unwritable location is handled. The key digests the model (class, weights,
preprocessing, class names) and its name, the layer, and the image set (each file's path, content, folder and
label), so a re-run is a file read and any change to weights, layer, preprocessing or images gives a new entry.

File format (``numpy.load(path)``; no pickles), for cache entries and :meth:`FeatureBank.save` alike
----------------------------------------------------------------------------------------------------
=============  ==================================================================================
``features``   ``(N, D)`` float32 (float16 for pixel banks), one row per readable image
``paths``      ``(N,)`` str, the image file of each row
``labels``     ``(N,)`` int64, model class index from the class folder, -1 when unknown
``folders``    ``(N,)`` str, class folder name, ``""`` for a flat folder
``layer``      str, e.g. ``"classifier.1:input"``, or ``"pixels"`` / ``"pixels@32"``
``model``      str, the model's name (``"pixels"`` for a pixel bank)
``space``      str, ``"features"`` or ``"pixels"``
``skipped``    ``(S, 2)`` str, the files of the image set without a row, and why
``key``        str, the cache key; ``version``: int, this format's version (1)
=============  ==================================================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepscope.cache import Cache, images_digest, make_key, model_digest
from deepscope.errors import DeepscopeError, LayerNotFoundError, UnsupportedModelError
from deepscope.fileio import atomic_path
from deepscope.images import ImageSet, Skip, iter_batches
from deepscope.models.preprocess import Preprocess
from deepscope.models.zoo import LoadedModel
from deepscope.probe import Probe, check_hookable, get_layer, model_device

FORMAT_VERSION = 1
METRICS = {"cosine": "cosine", "l2": "euclidean"}
PROJECTIONS = ("pca", "tsne", "umap")
INPUT_SUFFIX = ":input"


@dataclass
class FeatureBank:
    """One feature vector per image, with where it came from (see the module docstring for the file format).

    Attributes
    ----------
    features : torch.Tensor
        ``(N, D)`` float32 on the CPU, row ``i`` belongs to ``paths[i]``.
    paths, labels, folders : list
        Image file, model class index (or None) and class folder (or None) of each row.
    layer, model, space : str
        Where the features come from; ``space`` is ``"features"`` or ``"pixels"``.
    skipped : list of (Path, str)
        Files of the image set that have no row (not images, or unreadable), and why.
    key : str
        Cache key.
    """

    features: torch.Tensor
    paths: list[Path]
    labels: list[int | None]
    folders: list[str | None]
    layer: str
    model: str
    space: str = "features"
    skipped: list[Skip] = field(default_factory=list)
    key: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def class_ids(self) -> torch.Tensor:
        """``(N,)`` class of each row: the model class index when every row has one, else an index of the
        class folder (sorted names).

        Raises
        ------
        DeepscopeError
            When the images are not in class folders.
        """
        if self.labels and all(label is not None for label in self.labels):
            return torch.tensor(self.labels, dtype=torch.long)
        if self.folders and all(folder is not None for folder in self.folders):
            names = sorted(set(self.folders))
            return torch.tensor([names.index(f) for f in self.folders], dtype=torch.long)
        raise DeepscopeError("kNN accuracy needs labelled images: put them in one sub-folder per class.")

    def class_name(self, row: int, names: Sequence[str] | None = None) -> str:
        """A readable class of a row: ``names[label]`` when given, else the folder name."""
        label = self.labels[row]
        if names is not None and label is not None:
            return names[label]
        return self.folders[row] or ""

    def arrays(self) -> dict[str, np.ndarray]:
        """The bank as named NumPy arrays (the file format of the module docstring)."""
        dtype = np.float16 if self.space == "pixels" else np.float32
        return {
            "features": self.features.cpu().numpy().astype(dtype),
            "paths": np.array([str(p) for p in self.paths], dtype=str),
            "labels": np.array([-1 if v is None else v for v in self.labels], dtype=np.int64),
            "folders": np.array([f or "" for f in self.folders], dtype=str),
            "layer": np.array(self.layer), "model": np.array(self.model), "space": np.array(self.space),
            "skipped": np.array([[str(p), r] for p, r in self.skipped], dtype=str).reshape(-1, 2),
            "key": np.array(self.key), "version": np.array(FORMAT_VERSION),
        }

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray]) -> "FeatureBank":
        """The bank in arrays made by :meth:`arrays`.

        Raises
        ------
        ValueError, KeyError
            When the arrays are not a bank of this format.
        """
        if int(data["version"]) != FORMAT_VERSION:
            raise ValueError(f"feature bank format {int(data['version'])}, expected {FORMAT_VERSION}")
        features, rows = data["features"], len(data["paths"])
        if features.ndim != 2 or features.dtype.kind != "f" or features.shape[0] != rows:
            raise ValueError(f"features of shape {features.shape} ({features.dtype}) for {rows} paths")
        if len(data["labels"]) != rows or len(data["folders"]) != rows or data["labels"].dtype.kind != "i":
            raise ValueError("labels and folders do not match the paths")
        skipped = data["skipped"]
        if skipped.ndim != 2 or skipped.shape[1] != 2:
            raise ValueError(f"skipped of shape {skipped.shape}, expected (S, 2)")
        texts = [data[name] for name in ("paths", "folders", "skipped", "layer", "model", "space", "key")]
        if any(array.dtype.kind != "U" for array in texts):
            raise ValueError("text fields are not strings")
        return cls(torch.from_numpy(features.astype(np.float32)), [Path(p) for p in data["paths"]],
                   [None if v < 0 else int(v) for v in data["labels"]], [str(f) or None for f in data["folders"]],
                   str(data["layer"]), str(data["model"]), str(data["space"]),
                   [(Path(p), str(r)) for p, r in skipped], str(data["key"]))

    def save(self, path: str | Path) -> Path:
        """Write the bank as ``.npz`` atomically (float16 features for a pixel bank)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            np.savez(file, **self.arrays())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureBank":
        """Read a bank written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls.from_arrays({name: data[name] for name in data.files})
        except (OSError, KeyError, ValueError) as error:
            raise DeepscopeError(f"{path}: not a deepscope feature bank ({error}).") from None


# -- where features come from ---------------------------------------------------------------------------
def default_feature_layer(model: nn.Module) -> str:
    """``"NAME:input"`` for the model's last ``nn.Linear`` (the classifier head's input).

    Raises
    ------
    UnsupportedModelError
        If the model has no ``nn.Linear``; then name a layer.
    """
    check_hookable(model)
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name]
    if not linears:
        raise UnsupportedModelError("the model has no nn.Linear classifier to take features from; "
                                    "name a layer (see `deepscope layers MODEL`).")
    return linears[-1] + INPUT_SUFFIX


def pool_features(activation: torch.Tensor) -> torch.Tensor:
    """One vector per sample: ``(N, C, H, W)`` maps are averaged over space, ``(N, T, D)`` tokens over T."""
    if activation.ndim == 4:
        return activation.mean(dim=(2, 3))
    if activation.ndim == 3:
        return activation.mean(dim=1)
    return activation.flatten(1)


def extract_features(loaded: LoadedModel, images: ImageSet, layer: str | None = None, *, batch_size: int = 32,
                     cache: Cache | str | Path | bool | None = None, progress: bool = False) -> FeatureBank:
    """The feature bank of ``images`` at ``layer`` (default: :func:`default_feature_layer`).

    Parameters
    ----------
    loaded : LoadedModel
        The model (left unchanged; run on its own device) and its preprocessing.
    images : ImageSet
        Files that cannot be read get no row; the bank's ``skipped`` lists them.
    layer : str, optional
        A module name (its output) or ``"NAME:input"``.
    cache : Cache, path, bool or None
        A :class:`~deepscope.cache.Cache` or its folder; None or True: the default folder; False: no cache.
    progress : bool
        Show a progress bar.
    """
    model = loaded.model
    layer = layer or default_feature_layer(model)
    module = layer.removesuffix(INPUT_SUFFIX)
    get_layer(model, module)
    key = make_key("features", model_digest(loaded), loaded.name, layer, images_digest(images))

    def compute() -> FeatureBank:
        device = model_device(model)
        chunks, indices, skipped = [], [], list(images.skipped)
        with Probe(model, [] if layer.endswith(INPUT_SUFFIX) else [module], detach=True) as probe, \
                torch.inference_mode():
            if layer.endswith(INPUT_SUFFIX):
                probe.capture_inputs([module])
            for batch in iter_batches(images, loaded.preprocess, batch_size, progress=progress and "features"):
                skipped += batch.skipped
                if not batch.indices:
                    continue
                probe(batch.inputs.to(device))
                if layer not in probe.activations:
                    raise LayerNotFoundError(f"layer {module!r} did not run in the forward pass; choose another layer.")
                chunks.append(pool_features(probe.activations[layer]).float().cpu())
                indices += batch.indices
        return _bank(images, indices, chunks, skipped, layer, loaded.name, "features", key)

    return _cached_bank(cache, key, compute)


def pixel_bank(images: ImageSet, preprocess: Preprocess, *, size: int | None = None, batch_size: int = 32,
               cache: Cache | str | Path | bool | None = None, progress: bool = False) -> FeatureBank:
    """The preprocessed pixels of ``images`` as a bank (``3 * H * W`` numbers per image): the baseline
    feature space. ``size`` first shrinks the model input to ``size x size`` (area averaging).

    Values are rounded to float16 (as they are cached), which is far below one grey level.
    """
    if size is not None and not 1 <= size <= preprocess.input_size:
        raise DeepscopeError(f"pixel size {size}: shrink to between 1 and the model input's side "
                             f"({preprocess.input_size}), or keep the input size (None).")

    def transform(image):
        pixels = preprocess(image)
        return pixels if size is None else F.interpolate(pixels[None], size=(size, size), mode="area")[0]

    layer = "pixels" if size is None else f"pixels@{size}"
    key = make_key("pixels", repr(preprocess), layer, images_digest(images))

    def compute() -> FeatureBank:
        chunks, indices, skipped = [], [], list(images.skipped)
        for batch in iter_batches(images, transform, batch_size, progress=progress and "pixels"):
            skipped += batch.skipped
            if batch.indices:
                chunks.append(batch.inputs.flatten(1).half().float())
                indices += batch.indices
        return _bank(images, indices, chunks, skipped, layer, "pixels", "pixels", key)

    return _cached_bank(cache, key, compute)


def _bank(images: ImageSet, indices: list[int], chunks: list[torch.Tensor], skipped: list[Skip], layer: str,
          model: str, space: str, key: str) -> FeatureBank:
    """Assemble a bank from extracted rows."""
    if not indices:
        raise DeepscopeError(f"none of the {len(images)} image(s) under {images.root} could be read.")
    return FeatureBank(torch.cat(chunks), [images.paths[i] for i in indices], [images.labels[i] for i in indices],
                       [images.folders[i] for i in indices], layer, model, space, skipped, key)


def _cached_bank(cache: Cache | str | Path | bool | None, key: str, compute) -> FeatureBank:
    """The bank stored under ``key``, else ``compute()`` stored there."""
    def read(arrays) -> FeatureBank:
        bank = FeatureBank.from_arrays(arrays)
        if bank.key != key:
            raise ValueError(f"the entry holds key {bank.key[:12]}..., not {key[:12]}...")
        return bank

    return Cache.open(cache).get_or_compute("features", key, compute, read, write=FeatureBank.arrays, arrays=True)


# -- nearest neighbours -----------------------------------------------------------------------------------
@dataclass
class Neighbours:
    """The ``k`` nearest rows of a bank to each query row, nearest first, the query itself left out.

    Attributes
    ----------
    queries : torch.Tensor
        ``(Q,)`` row indices of the queries.
    indices, distances : torch.Tensor
        ``(Q, k)`` neighbour rows and their distances (cosine distance ``1 - cos``, or L2).
    metric : str
    """

    queries: torch.Tensor
    indices: torch.Tensor
    distances: torch.Tensor
    metric: str


def nearest_neighbours(bank: FeatureBank, queries: Sequence[int | str | Path] | torch.Tensor, k: int = 5,
                       metric: str = "cosine") -> Neighbours:
    """Top-``k`` neighbours of the query rows (row indices or image paths) among all other rows.

    Brute-force search with scikit-learn; ``metric`` is ``"cosine"`` or ``"l2"``.
    """
    rows = _query_rows(bank, queries)
    distances, indices = _search(bank.features, rows, k, metric)
    return Neighbours(rows, indices, distances, metric)


def knn_predictions(bank: FeatureBank, k: int = 5, metric: str = "cosine") -> torch.Tensor:
    """Leave-one-out k-NN class of every row: the majority class among its ``k`` nearest other rows;
    a tie goes to the tied class with the nearest member."""
    classes = bank.class_ids()
    _, indices = _search(bank.features, torch.arange(len(bank)), k, metric)
    votes = classes[indices]                                     # (N, k), nearest first
    count = int(classes.max()) + 1
    counts = torch.zeros(len(bank), count, dtype=torch.long).scatter_add_(1, votes, torch.ones_like(votes))
    first = torch.full((len(bank), count), k, dtype=torch.long)
    first.scatter_reduce_(1, votes, torch.arange(k).expand_as(votes), reduce="amin")
    tied = counts == counts.max(dim=1, keepdim=True).values
    return torch.where(tied, first, k + 1).argmin(dim=1)


def knn_accuracy(bank: FeatureBank, k: int = 5, metric: str = "cosine") -> float:
    """Leave-one-out k-NN classification accuracy (share of rows whose :func:`knn_predictions` is their class)."""
    return (knn_predictions(bank, k, metric) == bank.class_ids()).float().mean().item()


def choose_queries(bank: FeatureBank, n: int = 3) -> torch.Tensor:
    """``n`` evenly spaced rows (with class folders, these come from different classes)."""
    n = min(n, len(bank))
    return ((torch.arange(n) + 0.5) * len(bank) / n).long()


def _query_rows(bank: FeatureBank, queries) -> torch.Tensor:
    lookup = {Path(p).resolve(): i for i, p in enumerate(bank.paths)}
    rows = []
    for query in (queries.tolist() if isinstance(queries, torch.Tensor) else queries):
        if isinstance(query, (str, Path)):
            if Path(query).resolve() not in lookup:
                raise DeepscopeError(f"query {query}: not an image of this feature bank.")
            rows.append(lookup[Path(query).resolve()])
        elif not 0 <= int(query) < len(bank):
            raise DeepscopeError(f"query row {query} is outside the bank of {len(bank)} images.")
        else:
            rows.append(int(query))
    return torch.tensor(rows, dtype=torch.long)


def _search(features: torch.Tensor, rows: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices of the ``k`` nearest other rows to ``features[rows]``."""
    from sklearn.neighbors import NearestNeighbors

    if metric not in METRICS:
        raise DeepscopeError(f"metric={metric!r}: use one of {', '.join(METRICS)}.")
    if not 1 <= k < len(features):
        raise DeepscopeError(f"k={k}: needs 1 <= k < {len(features)} (the number of images).")
    data = features.float().cpu().numpy()
    search = NearestNeighbors(n_neighbors=k + 1, metric=METRICS[metric], algorithm="brute").fit(data)
    distances, indices = search.kneighbors(data[rows.numpy()])
    keep = indices != rows.numpy()[:, None]
    keep[keep.all(axis=1), -1] = False  # the query was crowded out by exact duplicates: drop the farthest
    shape = (len(rows), k)
    return torch.from_numpy(distances[keep].reshape(shape)).float(), torch.from_numpy(indices[keep].reshape(shape))


# -- projections -----------------------------------------------------------------------------------------
@dataclass
class Projection:
    """A bank's rows mapped to 2-D (or ``dims``-D).

    Attributes
    ----------
    points : torch.Tensor
        ``(N, dims)`` coordinates, row ``i`` = bank row ``i``.
    method : str
        ``"pca"``, ``"tsne"`` or ``"umap"``.
    explained_variance : torch.Tensor or None
        PCA only: share of the variance along each axis.
    space : str
        The bank's space (``"features"`` or ``"pixels"``).
    """

    points: torch.Tensor
    method: str
    explained_variance: torch.Tensor | None
    space: str


def project(bank: FeatureBank, method: str = "pca", *, dims: int = 2, seed: int = 0) -> Projection:
    """PCA, t-SNE (scikit-learn) or UMAP (``umap-learn``, optional) of the bank's rows.

    t-SNE and UMAP first reduce more than 50 dimensions to 50 with PCA (the usual recipe); t-SNE's
    perplexity is ``min(30, (N - 1) / 3)``. Results are deterministic for a given ``seed``.
    """
    from sklearn.decomposition import PCA

    if method not in PROJECTIONS:
        raise DeepscopeError(f"projection {method!r}: use one of {', '.join(PROJECTIONS)}.")
    data = bank.features.float().cpu().numpy()
    if len(data) <= dims:
        raise DeepscopeError(f"a {method} projection needs more than {dims} images, got {len(data)}.")
    if method == "pca":
        pca = PCA(n_components=dims, random_state=seed)
        points = pca.fit_transform(data)
        return Projection(torch.from_numpy(points).float(), method,
                          torch.from_numpy(pca.explained_variance_ratio_).float(), bank.space)
    if data.shape[1] > 50:
        data = PCA(n_components=min(50, len(data)), random_state=seed).fit_transform(data)
    if method == "tsne":
        from sklearn.manifold import TSNE

        points = TSNE(n_components=dims, perplexity=min(30.0, (len(data) - 1) / 3), init="pca",
                      random_state=seed).fit_transform(data)
    else:
        try:
            import umap
        except ImportError:
            raise DeepscopeError("the umap projection needs umap-learn: pip install umap-learn "
                                 "(or deepscope[umap]); pca and tsne work without it.") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points = umap.UMAP(n_components=dims, n_neighbors=min(15, len(data) - 1),
                               random_state=seed).fit_transform(data)
    return Projection(torch.from_numpy(np.ascontiguousarray(points)).float(), method, None, bank.space)
