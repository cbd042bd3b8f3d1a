"""Feature visualisation by optimisation: objectives, image parameterisations, transforms, regularisers.

>>> from deepscope.optimize import class_model, deep_dream, channel, l2
>>> images = class_model(model, [130, 144], preprocess, preset="lucid", steps=256)
"""

from deepscope.optimize.objectives import (Objective, Seen, channel, class_logit, deepdream, l2, layer_l2,
                                           neuron)
from deepscope.optimize.parameterizations import ImageParam, fourier_image, pixel_image
from deepscope.optimize.regularizers import YosinskiRegularizer
from deepscope.optimize.visualize import (PRESETS, class_model, class_probabilities, deep_dream, optimize_image,
                                          robust_probabilities)

__all__ = ["Objective", "Seen", "channel", "class_logit", "deepdream", "l2", "layer_l2", "neuron", "ImageParam",
           "fourier_image", "pixel_image", "YosinskiRegularizer", "PRESETS", "class_model", "class_probabilities",
           "deep_dream", "optimize_image", "robust_probabilities"]
