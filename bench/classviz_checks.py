"""Must-show checks for class models: the six lecture classes on the imported MobileNet-V2.

For one preset: each image's probability of its class (target >= 0.9), the mean probability over 16
random jitter/scale/rotations (target >= 0.5 for lucid), and whether EfficientNet-Lite0 (which the
images were not made for) puts the class in its top-5. Saves the images (.pt), numbers (.json) and a
figure (.png) under artifacts/.

    DEEPSCOPE_DATA=../shared/data nice python bench/classviz_checks.py lucid 128
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from deepscope.models.zoo import load_model
from deepscope.optimize import class_model, class_probabilities, robust_probabilities
from deepscope.render.common import save_figure
from deepscope.render.neurons import image_grid_figure

CLASSES = ["flamingo", "pelican", "hartebeest", "ground beetle", "Indian cobra", "station wagon"]


def main() -> None:
    preset, steps = sys.argv[1], int(sys.argv[2])
    out = Path(__file__).resolve().parents[1] / "artifacts"
    mobilenet = load_model(os.path.join(os.environ["DEEPSCOPE_DATA"], "models/coral/mobilenet_v2_1.0_224_quant.tflite"))
    classes = [mobilenet.classes.index(name) for name in CLASSES]
    start = time.perf_counter()
    images = class_model(mobilenet.model, classes, mobilenet.preprocess, preset=preset, steps=steps, seed=0)
    seconds = (time.perf_counter() - start) / steps
    rows = torch.arange(len(classes))
    prob = class_probabilities(mobilenet.model, mobilenet.preprocess, images)[rows, classes]
    robust = robust_probabilities(mobilenet.model, mobilenet.preprocess, images, classes, repeats=16).mean(1)
    other = load_model("default")
    other_probs = class_probabilities(other.model, other.preprocess, images)
    top5 = [c in other_probs[i].topk(5).indices.tolist() for i, c in enumerate(classes)]
    result = {"preset": preset, "steps": steps, "sec_per_step": seconds, "prob": prob.tolist(),
              "robust": robust.tolist(), "eff_top5": top5, "eff_prob": other_probs[rows, classes].tolist()}
    print(json.dumps(result))
    stem = out / f"classviz_{preset}_{steps}"
    out.mkdir(exist_ok=True)
    torch.save(images, stem.with_suffix(".pt"))
    stem.with_suffix(".json").write_text(json.dumps(result))
    titles = [f"{n}\nMNv2 p={p:.2f}, robust {r:.2f}\nEffNet-Lite0 top-5: {'yes' if t else 'no'}"
              for n, p, r, t in zip(CLASSES, result["prob"], result["robust"], top5)]
    save_figure(image_grid_figure(images, titles, f"MobileNet-V2 (TFLite import) class models, {preset}, {steps} steps"),
                stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
