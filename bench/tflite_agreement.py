"""Compare deepscope's float import of TFLite classifiers with the TFLite interpreter.

For each ``.tflite`` file in ``<data>/models/coral`` this prints, on the photos of
``<data>/in20``: top-1 / top-5 accuracy (over the 1000 ImageNet classes) of the
float PyTorch import and of the original quantised model run by the
``ai_edge_litert`` interpreter, the fraction of photos on which their top-1
predictions agree, and the mean per-photo Pearson correlation of their logits.

Preprocessing (both models see the same crop): RGB, resize the shorter side to
``round(size / 0.875)`` (256 for 224) with bilinear filtering, centre-crop ``size``.
The float import gets ``(x / 255 - 0.5) / 0.5``. The interpreter gets, by default
(``--interp-input pixels``), the uint8 pixels themselves (``pixel - 128`` for an
int8 input tensor): that is the file's native input, whose meaning the file's
input quantisation defines (``(p - 128) / 128`` here, within 0.4% of the float
input). ``--interp-input quantised`` instead quantises the float input with the
input scale and zero point, which for a zero point of 128 shifts every pixel
>= 128 up by one level and makes the comparison noisier.

Usage::

    nice python bench/tflite_agreement.py [--data DIR] [--limit N] [--models NAME ...]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepscope.models.tflite import load_tflite, logits_tensor_index

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$DEEPSCOPE_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DEEPSCOPE_DATA", REPO.parent / "shared" / "data"))


def photo_list(data: Path, limit: int | None) -> list[tuple[Path, int]]:
    """``(photo, ImageNet index)`` pairs, interleaved over the classes."""
    wnids = [line.split()[0] for line in (data / "imagenet" / "synset_words.txt").read_text().splitlines()]
    index = {w: i for i, w in enumerate(wnids)}
    per_class = [sorted(d.glob("*.JPEG")) for d in sorted((data / "in20").iterdir()) if d.is_dir()]
    photos = []
    for rank in range(max(len(c) for c in per_class)):
        photos += [(c[rank], index[c[rank].parent.name]) for c in per_class if rank < len(c)]
    return photos[:limit] if limit else photos


def load_crop(path: Path, size: int) -> np.ndarray:
    """uint8 HWC RGB crop: shorter side resized to round(size/0.875), centre crop."""
    img = Image.open(path).convert("RGB")
    short = round(size / 0.875)
    w, h = img.size  # as torchvision's Resize(short): the long side is truncated
    img = img.resize((short, int(short * h / w)) if w <= h else (int(short * w / h), short),
                     Image.BILINEAR)
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalise(pixels: np.ndarray) -> np.ndarray:
    """Float image in [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    return (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5


class TFLiteRunner:
    """The original quantised model in the ``ai_edge_litert`` interpreter."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path), num_threads=1,
                                  experimental_preserve_all_tensors=True)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.logits = logits_tensor_index(path)
        details = {d["index"]: d for d in self.interp.get_tensor_details()}
        self.logit_scale, self.logit_zp = details[self.logits]["quantization"]

    def quantise(self, pixels: np.ndarray, mode: str = "pixels") -> np.ndarray:
        """The input tensor for a uint8 HWC crop (see the module docstring)."""
        dtype = self.inp["dtype"]
        if mode == "pixels":
            return (pixels.astype(np.int16) - (128 if dtype == np.int8 else 0)).astype(dtype)
        scale, zp = self.inp["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.floor(normalise(pixels) / scale + zp + 0.5), info.min, info.max).astype(dtype)

    def __call__(self, pixels: np.ndarray, mode: str = "pixels") -> np.ndarray:
        """1000 dequantised logits for one uint8 HWC crop."""
        self.interp.set_tensor(self.inp["index"], self.quantise(pixels, mode)[None])
        self.interp.invoke()
        raw = self.interp.get_tensor(self.logits).reshape(-1).astype(np.float32)
        logits = (raw - self.logit_zp) * self.logit_scale
        return logits[1:] if logits.size == 1001 else logits


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each label is among the k largest logits of its row."""
    top = np.argsort(-logits, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def evaluate(model_path: Path, photos: list[tuple[Path, int]], mode: str = "pixels",
             batch: int = 25) -> dict:
    """Logits of the import and the interpreter on ``photos``, and the figures."""
    imp = load_tflite(model_path)
    runner = TFLiteRunner(model_path)
    ours, theirs = [], []
    for start in range(0, len(photos), batch):
        crops = [load_crop(p, imp.input_size) for p, _ in photos[start:start + batch]]
        with torch.no_grad():
            x = torch.from_numpy(normalise(np.stack(crops))).permute(0, 3, 1, 2)
            ours.append(imp.model(x).numpy())
        theirs += [runner(c, mode) for c in crops]
    ours, theirs = np.concatenate(ours), np.stack(theirs)
    labels = np.array([c for _, c in photos])
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(ours, theirs)]
    return {
        "top1": topk_hits(ours, labels, 1).mean(), "top5": topk_hits(ours, labels, 5).mean(),
        "tfl_top1": topk_hits(theirs, labels, 1).mean(), "tfl_top5": topk_hits(theirs, labels, 5).mean(),
        "agree": (ours.argmax(1) == theirs.argmax(1)).mean(), "corr": float(np.mean(corr)),
        "min_corr": float(np.min(corr)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="reference data folder")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    parser.add_argument("--models", nargs="*", default=None, help="file names (default: all)")
    parser.add_argument("--interp-input", choices=("pixels", "quantised"), default="pixels",
                        help="what the interpreter is fed (see the module docstring)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos = photo_list(args.data, args.limit)
    files = sorted((args.data / "models" / "coral").glob("*.tflite"))
    if args.models:
        files = [f for f in files if f.name in args.models or f.stem in args.models]
    print(f"{len(photos)} photos from {args.data / 'in20'}; interpreter input: {args.interp_input}")
    print(f"{'model':34s} {'import top1/top5':>17s} {'interp top1/top5':>17s} {'agree':>6s} {'corr':>6s} {'min':>6s} {'s':>5s}")
    for f in files:
        t0 = time.time()
        r = evaluate(f, photos, args.interp_input)
        print(f"{f.stem:34s} {100 * r['top1']:7.1f} / {100 * r['top5']:5.1f}  "
              f"{100 * r['tfl_top1']:7.1f} / {100 * r['tfl_top5']:5.1f}  {100 * r['agree']:5.1f}% "
              f"{r['corr']:6.3f} {r['min_corr']:6.3f} {time.time() - t0:5.0f}", flush=True)


if __name__ == "__main__":
    main()
