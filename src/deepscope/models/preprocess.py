"""How a model wants its input: resize, centre crop, and normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, scale to [0, 1], then ``(x - mean) / std``.

    Parameters
    ----------
    input_size : int
        Side of the square crop the model sees.
    resize_size : int
        Shorter side after resizing, before the crop.
    mean, std : tuple of float
        Per-channel normalisation of [0, 1] pixels.
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A (3, input_size, input_size) normalised float tensor of an RGB PIL image."""
        return self.normalize(self.crop(image))

    def crop(self, image: Image.Image) -> torch.Tensor:
        """The resized, centre-cropped image as a (3, H, W) float tensor in [0, 1]."""
        return TF.to_dtype(self.crop_bytes(image), torch.float32, scale=True)

    def crop_bytes(self, image: Image.Image) -> torch.Tensor:
        """The resized, centre-cropped image as a (3, H, W) uint8 tensor (a quarter of :meth:`crop`'s memory)."""
        image = TF.resize(image, self.resize_size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        return TF.pil_to_tensor(TF.center_crop(image, self.input_size))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] pixels (``(..., 3, H, W)``) to model input."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Map model input back to [0, 1] pixels (not clamped)."""
        mean, std = self._stats(inputs)
        return inputs * std + mean

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(3, 1, 1)
        return mean, std

    @property
    def input_range(self) -> float:
        """Width of the model-input range that [0, 1] pixels map to (largest over channels)."""
        return max(1.0 / s for s in self.std)

    def describe(self) -> str:
        return (f"resize shorter side to {self.resize_size}, centre-crop {self.input_size}, "
                f"mean {tuple(round(m, 4) for m in self.mean)}, std {tuple(round(s, 4) for s in self.std)}")
