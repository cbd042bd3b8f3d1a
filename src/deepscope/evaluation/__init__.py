"""How far to trust a saliency map: faithfulness metrics and chance-level controls.

- :mod:`~deepscope.evaluation.controls`: a random map and a centred Gaussian map (chance level).
- :mod:`~deepscope.evaluation.deletion_insertion`: deletion and insertion curves and their AUC
  (Petsiuk, Das and Saenko, RISE, 2018).
- :mod:`~deepscope.evaluation.pointing_game`: the grid pointing game (Böhle, Fritz and Schiele, 2022).
- :mod:`~deepscope.evaluation.randomization`: cascading model-parameter randomisation
  (Adebayo et al., Sanity Checks for Saliency Maps, 2018).
- :mod:`~deepscope.evaluation.table`: all of the above for a list of registered methods, as table rows.

Every metric takes maps from any :class:`~deepscope.attribution.base.Attribution` (or any callable
``(inputs, target) -> maps``). Maps with several channels are first reduced to one with
:func:`deepscope.maps.reduce_channels` (``abs-max`` by default, the saliency deepscope displays) and
resized to the input (see :func:`saliency`).
"""

from deepscope.evaluation.common import saliency
from deepscope.evaluation.controls import CenterMap, RandomMap
from deepscope.evaluation.deletion_insertion import PerturbationCurve, auc, deletion_curve, insertion_curve
from deepscope.evaluation.pointing_game import PointingResult, grid_pointing_game, make_mosaics
from deepscope.evaluation.randomization import (RandomizationResult, cascading_randomization, randomization_layers,
                                                spearman, ssim)

__all__ = ["CenterMap", "PerturbationCurve", "PointingResult", "RandomMap", "RandomizationResult", "auc",
           "cascading_randomization", "deletion_curve", "grid_pointing_game", "insertion_curve", "make_mosaics",
           "randomization_layers", "saliency", "spearman", "ssim"]
