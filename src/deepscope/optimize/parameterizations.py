"""Image parameterisations: the tensors an optimiser changes, and how they become [0, 1] pixels.

- :func:`pixel_image`: the pixels themselves (Simonyan et al. 2014; Yosinski et al. 2015).
- :func:`fourier_image`: a Fourier spectrum scaled by 1/f, with colour decorrelation and a sigmoid
  (Olah et al. 2017, "Feature Visualization"; Lucid's ``fft_image`` and ``to_valid_rgb``).

Each returns an :class:`ImageParam`: ``params`` to optimise and ``pixels()`` -> (N, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: square root of ImageNet's colour correlation matrix (Lucid), columns normalised to a max norm of 1
_COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                        [0.27, 0.00, -0.05],
                                        [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR_CORRELATION_SQRT / _COLOR_CORRELATION_SQRT.norm(dim=0).max()


@dataclass
class ImageParam:
    """Parameters of an image and the function that renders them to [0, 1] pixels.

    ``project()`` is called after every optimiser step (keeps plain pixels inside [0, 1]).
    """

    params: list[torch.Tensor]
    pixels: Callable[[], torch.Tensor]
    project: Callable[[], None] = lambda: None
    kind: str = "pixels"


def pixel_image(shape: tuple[int, int, int, int], generator: torch.Generator, sd: float = 0.01,
                device: torch.device | str = "cpu", init: torch.Tensor | None = None) -> ImageParam:
    """Plain [0, 1] pixels, starting from grey plus noise of std ``sd`` (or from ``init``), clamped after each step."""
    if init is None:
        image = 0.5 + sd * torch.randn(shape, generator=generator)
    else:
        image = init.detach().clone().cpu()
    image = image.clamp(0, 1).to(device).requires_grad_(True)

    def project() -> None:
        with torch.no_grad():
            image.clamp_(0, 1)

    return ImageParam([image], lambda: image, project, "pixels")


def rfft2d_frequencies(height: int, width: int) -> torch.Tensor:
    """|frequency| of each coefficient of a real 2-D FFT of an ``height x width`` image, (H, W//2+1)."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return (fx * fx + fy * fy).sqrt()


def decorrelate_colors(image: torch.Tensor) -> torch.Tensor:
    """Map decorrelated colour channels to RGB with ImageNet's colour correlation (N, 3, H, W)."""
    matrix = COLOR_CORRELATION.to(image)
    return torch.einsum("ij,njhw->nihw", matrix, image)


def fourier_image(shape: tuple[int, int, int, int], generator: torch.Generator, sd: float = 0.01,
                  decay_power: float = 1.0, decorrelate: bool = True,
                  device: torch.device | str = "cpu") -> ImageParam:
    """A spectrum with 1/f^decay_power scaling, inverse FFT, colour decorrelation, sigmoid (Lucid)."""
    n, channels, height, width = shape
    frequencies = rfft2d_frequencies(height, width)
    scale = 1.0 / frequencies.clamp(min=1.0 / max(height, width)) ** decay_power
    scale = scale[None, None, :, :, None].to(device)
    spectrum = (sd * torch.randn((n, channels, *frequencies.shape, 2), generator=generator)).to(device)
    spectrum.requires_grad_(True)

    def pixels() -> torch.Tensor:
        image = torch.fft.irfftn(torch.view_as_complex(scale * spectrum), s=(height, width), norm="ortho") / 4.0
        if decorrelate:
            image = decorrelate_colors(image)
        return torch.sigmoid(image)

    return ImageParam([spectrum], pixels, lambda: None, "fourier")


