"""Section "classviz": images optimised to be each class, and a Deep Dream of one photo."""

from __future__ import annotations

import torch

from deepscope.optimize import class_model, class_probabilities, deep_dream
from deepscope.render.neurons import image_grid_figure
from deepscope.report.base import Figure, ReportContext, Section
from deepscope.report.layers import block_layer

#: classes drawn (the most frequent predictions among the sample images)
CLASSES = 2
#: optimisation steps of a class model, and Deep Dream's octaves and steps per octave, unless --steps says
CLASS_STEPS, DREAM_OCTAVES, DREAM_STEPS = 48, 3, 10
PRESET = "lucid"


def classviz_section(ctx: ReportContext) -> Section:
    loaded, settings = ctx.loaded, ctx.settings
    samples = ctx.samples()
    predicted = [ctx.prediction(i)[0] for i in samples]
    classes = sorted(set(predicted), key=lambda c: (-predicted.count(c), predicted.index(c)))[:CLASSES]
    steps = settings.steps or CLASS_STEPS
    names = loaded.classes.names

    def draw_classes():
        images = class_model(loaded.model, classes, loaded.preprocess, preset=PRESET, steps=steps, seed=settings.seed,
                             progress=settings.progress)
        probs = class_probabilities(loaded.model, loaded.preprocess, images).cpu()
        titles = [f"{names[c]}\np={float(probs[i, c]):.2f}" for i, c in enumerate(classes)]
        return image_grid_figure(images.cpu(), titles)

    items = [Figure(ctx.figure("classviz", [classes, PRESET, steps, settings.seed], draw_classes, images=False),
                    caption=f"Class models ({PRESET} preset, {steps} steps, seed {settings.seed}); p is the "
                            "probability the model gives the image for its class.")]
    layer = block_layer(loaded.model, 0.5)
    path = ctx.images.paths[samples[0]]
    dream_steps = settings.steps or DREAM_STEPS

    def draw_dream():
        photo = ctx.pixels(samples[:1])[0]
        dream = deep_dream(loaded.model, photo, layer, loaded.preprocess, octaves=DREAM_OCTAVES, steps=dream_steps,
                           seed=settings.seed, progress=settings.progress)[0].cpu()
        return image_grid_figure(torch.stack([photo, dream]), ["photo", f"Deep Dream, {layer}"])

    items.append(Figure(ctx.figure("dream", [str(path), layer, DREAM_OCTAVES, dream_steps, settings.seed], draw_dream),
                        caption=f"Deep Dream of {path.name}: {DREAM_OCTAVES} octaves x {dream_steps} steps of gradient "
                                f"ascent on the mean squared activation of {layer}."))
    return Section("classviz", "Class models and Deep Dream",
                   "What the network has learned each class looks like: images optimised to maximise one class's score "
                   "(Simonyan et al. 2014, with the regularisers of Olah et al. 2017), and a photo pushed to "
                   "amplify what a middle layer sees (Mordvintsev et al. 2015).", items)
