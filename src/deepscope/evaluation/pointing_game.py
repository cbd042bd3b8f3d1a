"""The grid pointing game (Böhle, Fritz and Schiele, "B-cos Networks", CVPR 2022).

Photos of four different classes are tiled into a 2x2 mosaic; each tile's class is explained on the
whole mosaic, and the score is the share of the map's *positive* attribution that falls inside that
tile. A map that ignores the image scores 25% on average (the chance level); a perfect one scores 100%.
No bounding boxes are needed.

As in Böhle et al., the tiles keep the model's input size, so a mosaic is twice as large (448 px for a
224 px model). Models that end in global pooling (CAM-style heads: MobileNet, EfficientNet, ResNet)
take the larger input as they are; a model with a fixed input size raises
:class:`~deepscope.errors.UnsupportedModelError`. Only photos the model classifies correctly on their
own (as single images) are used, so every mosaic counts: its four tiles are all classified correctly.
Maps with several channels are reduced by :func:`~deepscope.evaluation.common.saliency` (``abs-max``;
pass ``reduction="sum"`` for Böhle's sum over colour channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepscope.attribution.base import check_inputs
from deepscope.errors import DeepscopeError, UnsupportedModelError
from deepscope.evaluation.common import DEFAULT_REDUCTION, Explainer, saliency
from deepscope.probe import batched_forward

GRID = 2  # tiles per side


@dataclass
class PointingResult:
    """Scores of the grid pointing game.

    Attributes
    ----------
    scores : (M, 4) tensor
        Share of positive attribution inside each tile of each mosaic (tiles in row-major order).
    classes : (M, 4) tensor
        The class of each tile (the class explained).
    tiles : (M, 4) tensor
        Index of each tile's photo in the pool passed to :func:`make_mosaics`.
    pool_size, pool_correct : int
        Photos offered, and those the model classified correctly (the ones mosaics are drawn from).
    """

    scores: torch.Tensor
    classes: torch.Tensor
    tiles: torch.Tensor
    pool_size: int = 0
    pool_correct: int = 0

    @property
    def mosaic_scores(self) -> torch.Tensor:
        """(M,) mean score of each mosaic's four tiles (the unit the spread is measured over)."""
        return self.scores.mean(dim=1)

    @property
    def mean(self) -> float:
        return float(self.scores.mean()) if self.scores.numel() else float("nan")

    @property
    def std(self) -> float:
        """Standard deviation over mosaics (of their mean score)."""
        return float(self.mosaic_scores.std()) if len(self.scores) > 1 else float("nan")

    @property
    def sem(self) -> float:
        """Standard error of :attr:`mean`, over mosaics."""
        return self.std / len(self.scores) ** 0.5 if len(self.scores) > 1 else float("nan")


def make_mosaics(model: nn.Module, tiles: torch.Tensor, labels: torch.Tensor | list[int], count: int, *,
                 seed: int = 0, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Draw ``count`` seeded 2x2 mosaics of correctly classified photos of four different classes.

    Parameters
    ----------
    tiles : (K, C, H, W) tensor
        Model input of each photo of the pool (the model's input size).
    labels : K class indices
        True class of each photo.

    Returns
    -------
    mosaics : (count, C, 2H, 2W) tensor
    classes : (count, 4) long tensor
        Class of each tile, row-major (top-left, top-right, bottom-left, bottom-right).
    chosen : (count, 4) long tensor
        Index of each tile's photo in ``tiles``.
    correct : int
        Number of photos of the pool the model classified correctly.
    """
    check_inputs(tiles)
    labels = torch.as_tensor(labels, device=tiles.device).long()
    if labels.shape != (tiles.shape[0],):
        raise DeepscopeError(f"need one label per tile: {tiles.shape[0]} tiles, {labels.numel()} labels.")
    predicted = batched_forward(model, tiles, batch_size).argmax(dim=1)
    correct = (predicted == labels).nonzero().flatten().cpu()
    by_class: dict[int, list[int]] = {}
    for index in correct.tolist():
        by_class.setdefault(int(labels[index]), []).append(index)
    if len(by_class) < GRID * GRID:
        raise DeepscopeError(f"the grid pointing game needs correctly classified photos of at least 4 classes; "
                             f"the model got {len(correct)} of {len(tiles)} photos right, in {len(by_class)} "
                             "class(es). Give more images per class or more classes.")
    generator = torch.Generator().manual_seed(seed)
    class_ids = sorted(by_class)
    chosen = torch.empty(count, GRID * GRID, dtype=torch.long)
    for m in range(count):
        picked = torch.randperm(len(class_ids), generator=generator)[:GRID * GRID].tolist()
        for t, c in enumerate(picked):
            photos = by_class[class_ids[c]]
            chosen[m, t] = photos[int(torch.randint(len(photos), (1,), generator=generator))]
    chosen = chosen.to(tiles.device)
    n, c, h, w = tiles.shape
    grid = tiles[chosen.flatten()].view(count, GRID, GRID, c, h, w)
    mosaics = grid.permute(0, 3, 1, 4, 2, 5).reshape(count, c, GRID * h, GRID * w)
    return mosaics, labels[chosen], chosen, len(correct)


def tile_shares(maps: torch.Tensor) -> torch.Tensor:
    """(N, 4) share of each (N, 1, H, W) map's positive mass in each tile of a 2x2 grid (row-major).

    A map with no positive value gets 0 in every tile.
    """
    positive = maps.clamp(min=0)
    n, _, h, w = positive.shape
    if h % GRID or w % GRID:
        raise DeepscopeError(f"a 2x2 mosaic map needs an even size, got {h}x{w}.")
    per_tile = positive.view(n, GRID, h // GRID, GRID, w // GRID).sum(dim=(2, 4)).flatten(1)
    return per_tile / per_tile.sum(dim=1, keepdim=True).clamp_min(torch.finfo(per_tile.dtype).tiny)


def grid_pointing_game(method: Explainer, model: nn.Module, tiles: torch.Tensor, labels: torch.Tensor | list[int], *,
                       mosaics: int = 20, seed: int = 0, batch_size: int = 16, reduction: str = DEFAULT_REDUCTION,
                       progress: bool = False) -> PointingResult:
    """Play the grid pointing game with ``method`` on mosaics drawn from a pool of photos.

    Parameters
    ----------
    method : Attribution or callable ``(inputs, target) -> maps``
        The explanation to score; it is called on mosaics with one tile class per sample.
    model : nn.Module
        The classifier ``method`` explains (used to keep only correctly classified photos).
    tiles, labels
        The pool of photos at the model's input size and their classes (see :func:`make_mosaics`).
    mosaics : int
        How many mosaics to draw (seeded by ``seed``); each contributes four scores.
    batch_size : int
        (mosaic, tile class) pairs explained per call of ``method``.
    """
    from tqdm.auto import tqdm

    grids, classes, chosen, correct = make_mosaics(model, tiles, labels, mosaics, seed=seed, batch_size=batch_size)
    size = tuple(grids.shape[-2:])
    try:
        batched_forward(model, grids[:1])
    except RuntimeError as error:
        raise UnsupportedModelError(
            f"the model cannot take a {size[0]}x{size[1]} mosaic ({str(error).splitlines()[0]}); the grid "
            "pointing game needs a model that accepts twice its input size (global pooling).") from None
    flat_classes = classes.flatten()
    scores = torch.empty(len(flat_classes), device=tiles.device)
    tile_of_pair = torch.arange(len(flat_classes), device=tiles.device) % (GRID * GRID)
    for begin in tqdm(range(0, len(flat_classes), batch_size), desc="pointing game", unit="batch",
                      disable=not progress, leave=False):
        index = torch.arange(begin, min(begin + batch_size, len(flat_classes)), device=tiles.device)
        inputs = grids[index // (GRID * GRID)]  # each mosaic once per tile class, chunk by chunk
        shares = tile_shares(saliency(method(inputs, flat_classes[index]).detach(), size, reduction))
        scores[index] = shares.gather(1, tile_of_pair[index].view(-1, 1)).squeeze(1).to(scores.dtype)
    return PointingResult(scores.view(-1, GRID * GRID), classes, chosen, len(tiles), correct)
