"""Figures of the faithfulness metrics: deletion/insertion curves and the sanity-check cascade."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from deepscope.evaluation.deletion_insertion import PerturbationCurve
from deepscope.evaluation.randomization import RandomizationResult
from deepscope.maps import normalize
from deepscope.render.common import subplots, to_image_array


def perturbation_curves_figure(curves: Mapping[str, Sequence[PerturbationCurve]]) -> Figure:
    """Mean deletion and insertion curves per method, side by side, with each mean AUC in the legend.

    ``curves`` maps a method name to its curves (any of deletion and insertion).
    """
    fig, axes = subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind, better in zip(axes, ("deletion", "insertion"), ("lower", "higher")):
        for method, method_curves in curves.items():
            for curve in method_curves:
                if curve.kind == kind:
                    mean = curve.probabilities.float().mean(dim=0).cpu()
                    ax.plot(curve.fractions.cpu(), mean, label=f"{method} (AUC {float(curve.auc.mean()):.3f})")
        ax.set_title(f"{kind}: {better} area is better")
        ax.set_xlabel(f"share of pixels {'deleted' if kind == 'deletion' else 'inserted'} (most salient first)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("target class probability (mean over images)")
    fig.tight_layout()
    return fig


def randomization_figure(results: Mapping[str, RandomizationResult], pixels: torch.Tensor | None = None,
                         image: int = 0) -> Figure:
    """The classic sanity-check figure (Adebayo et al. 2018): one row of maps per method.

    Columns: the original map, then the map after each step of the cascade (layers randomised from the
    top), titled with the last layer randomised and the rank correlation with the original.
    Maps are shown as |map| in grey, clipped at their 99th percentile; ``pixels`` ((3, H, W) in
    [0, 1]) adds the photo as the first column.
    """
    rows = list(results.items())
    steps = max(len(result.layers) for _, result in rows) + 1
    columns = steps + (pixels is not None)
    fig, axes = subplots(len(rows), columns, figsize=(1.9 * columns, 2.0 * len(rows)), squeeze=False)
    for r, (method, result) in enumerate(rows):
        offset = 0
        if pixels is not None:
            axes[r, 0].imshow(to_image_array(pixels))
            offset = 1
        for k in range(min(steps, len(result.maps))):
            ax = axes[r, k + offset]
            heat = normalize(result.maps[k, image].abs().float()[None], "percentile")[0, 0]  # as Adebayo: |map|
            ax.imshow(heat.cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            if r == 0:
                ax.set_title("original" if k == 0 else f"up to {result.layers[k - 1]}", fontsize=8)
            if k:
                ax.text(0.02, 0.02, f"ρ={float(result.spearman[k, image]):.2f}", transform=ax.transAxes,
                        fontsize=7, color="white", backgroundcolor=(0.6, 0, 0, 0.6))
        axes[r, 0].set_ylabel(method, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("cascading randomisation, top layer first: a faithful map should change", fontsize=10)
    fig.tight_layout()
    return fig


def randomization_similarity_figure(results: Mapping[str, RandomizationResult]) -> Figure:
    """Rank correlation and SSIM with the original map along the cascade, one line per method."""
    fig, axes = subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, ("spearman", "ssim")):
        for method, result in results.items():
            values = getattr(result, metric).float().mean(dim=1).cpu()
            ax.plot(range(len(values)), values, marker="o", label=method)
        labels = ["original"] + list(next(iter(results.values())).layers)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title("Spearman rank correlation of |maps|" if metric == "spearman" else "SSIM of |maps|")
        ax.set_xlabel("randomised down to")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("similarity to the original map")
    fig.tight_layout()
    return fig
