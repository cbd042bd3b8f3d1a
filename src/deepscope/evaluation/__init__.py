"""How far to trust a saliency map: faithfulness metrics and chance-level controls.

- :mod:`~deepscope.evaluation.deletion_insertion`: deletion and insertion curves and their AUC
  (Petsiuk, Das and Saenko, RISE, 2018).
- :mod:`~deepscope.evaluation.pointing_game`: the grid pointing game (Böhle, Fritz and Schiele, 2022).
- :mod:`~deepscope.evaluation.randomization`: cascading model-parameter randomisation
  (Adebayo et al., Sanity Checks for Saliency Maps, 2018).
- :mod:`~deepscope.evaluation.road`: ROAD, remove and debias with noisy linear imputation (Rong et al. 2022).
- :mod:`~deepscope.evaluation.pixel_flipping`: pixel flipping, region perturbation (Samek et al. 2017) and
  IROF (Rieger & Hansen 2020).
- :mod:`~deepscope.evaluation.infidelity`: infidelity and sensitivity-max (Yeh et al. 2019).
- :mod:`~deepscope.evaluation.confidence`: average drop and increase in confidence (Chattopadhay et al. 2018).
- :mod:`~deepscope.evaluation.mprt`: eMPRT and sMPRT, the randomisation test revisited (Hedström et al. 2023).
- :mod:`~deepscope.evaluation.metrics`: the catalogue of all of them (direction, chance level, cost, options).

Every metric takes tensors (maps) or explainers: an :class:`~deepscope.attribution.base.Attribution`, any
callable ``(inputs, target) -> maps``, or a builder ``model -> explainer`` -- never a method's name (the trust
table, :mod:`deepscope.trust_table`, builds methods from the catalogue). Maps with several channels are
first reduced to one with :func:`deepscope.maps.saliency` (``reduction``: ``abs-max`` by default; pass a
method's ``display.reduction`` to rank its maps as they are shown). The chance-level controls (random and
centred maps) are methods: :mod:`deepscope.attribution.controls`.
"""

from deepscope.evaluation.common import saliency
from deepscope.evaluation.confidence import ConfidenceResult, confidence_change
from deepscope.evaluation.deletion_insertion import PerturbationCurve, auc, deletion_curve, insertion_curve
from deepscope.evaluation.infidelity import infidelity, sensitivity_max
from deepscope.evaluation.metrics import METRICS, MetricEntry, get_metric
from deepscope.evaluation.mprt import EMPRTResult, efficient_mprt, smooth_mprt, smooth_mprt_score
from deepscope.evaluation.pixel_flipping import IROFResult, irof, pixel_flipping, region_perturbation
from deepscope.evaluation.pointing_game import PointingResult, grid_pointing_game, make_mosaics
from deepscope.evaluation.randomization import (RandomizationResult, cascading_randomization, randomization_layers,
                                                spearman, ssim)
from deepscope.evaluation.road import ROADResult, road

__all__ = ["ConfidenceResult", "EMPRTResult", "IROFResult", "METRICS", "MetricEntry", "PerturbationCurve",
           "PointingResult", "ROADResult", "RandomizationResult", "auc", "cascading_randomization",
           "confidence_change", "deletion_curve", "efficient_mprt", "get_metric", "grid_pointing_game", "infidelity",
           "insertion_curve", "irof", "make_mosaics", "pixel_flipping", "randomization_layers", "region_perturbation",
           "road", "saliency", "sensitivity_max", "smooth_mprt", "smooth_mprt_score", "spearman", "ssim"]
