"""How far to trust a saliency map: faithfulness metrics and chance-level controls.

- :mod:`~deepscope.evaluation.deletion_insertion`: deletion and insertion curves and their AUC
  (Petsiuk, Das and Saenko, RISE, 2018).
- :mod:`~deepscope.evaluation.pointing_game`: the grid pointing game (Böhle, Fritz and Schiele, 2022).
- :mod:`~deepscope.evaluation.randomization`: cascading model-parameter randomisation
  (Adebayo et al., Sanity Checks for Saliency Maps, 2018).

Every metric takes tensors (maps) or explainers: an :class:`~deepscope.attribution.base.Attribution`, any
callable ``(inputs, target) -> maps``, or a builder ``model -> explainer`` -- never a method's name (the trust
table, :mod:`deepscope.trust_table`, builds methods from the catalogue). Maps with several channels are
first reduced to one with :func:`deepscope.maps.saliency` (``reduction``: ``abs-max`` by default; pass a
method's ``display.reduction`` to rank its maps as they are shown). The chance-level controls (random and
centred maps) are methods: :mod:`deepscope.attribution.controls`.
"""

from deepscope.evaluation.common import saliency
from deepscope.evaluation.deletion_insertion import PerturbationCurve, auc, deletion_curve, insertion_curve
from deepscope.evaluation.pointing_game import PointingResult, grid_pointing_game, make_mosaics
from deepscope.evaluation.randomization import (RandomizationResult, cascading_randomization, randomization_layers,
                                                spearman, ssim)

__all__ = ["PerturbationCurve", "PointingResult", "RandomizationResult", "auc",
           "cascading_randomization", "deletion_curve", "grid_pointing_game", "insertion_curve", "make_mosaics",
           "randomization_layers", "saliency", "spearman", "ssim"]
