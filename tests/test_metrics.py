"""The metrics of the catalogue: agreement with the reference libraries on the same maps and draws, known answers
on hand-built models, chance levels of the controls, invariances, and the user's model left as it was."""

import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution import Gradient, GradCAM, SmoothGrad
from deepscope.attribution.controls import CenterMap, RandomMap
from deepscope.errors import DeepscopeError
from deepscope.evaluation import (METRICS, cascading_randomization, confidence_change, efficient_mprt, get_metric,
                                  infidelity, irof, pixel_flipping, region_perturbation, road, sensitivity_max,
                                  smooth_mprt)
from deepscope.evaluation.imputation import noisy_linear_imputation
from deepscope.evaluation.mprt import SmoothedExplainer, histogram_entropy

warnings.filterwarnings("ignore", module="quantus")


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)).eval()


def images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


class CornerModel(nn.Module):
    """Two classes; logit 0 = 8 * (mean of the top-left 8x8 corner over channels), logit 1 = 0."""

    def forward(self, x):
        corner = x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return torch.stack([8 * corner, torch.zeros_like(corner)], dim=1)


def corner_inputs(n=4, size=24):
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2)) * 0.2
    x[:, :, :8, :8] = 1.0
    return x


def corner_map(n=4, size=24, anti=False):
    maps = torch.zeros(n, 1, size, size)
    maps[:, :, :8, :8] = 1.0
    maps += torch.linspace(0, 0.01, size * size).view(1, 1, size, size)  # no ties
    return maps.max() - maps if anti else maps


def relative_error(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a), dtype=torch.float64), torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


# -- ROAD -------------------------------------------------------------------------------------------------------

def test_imputation_solves_the_linear_system_of_the_reference():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    x = images(2, 30)
    removed = torch.rand(2, 1, 30, 30, generator=torch.Generator().manual_seed(3)) < 0.6
    removed[1, :, 5:25, 3:28] = True  # a large hole: the slow case for iterative solvers
    ours = noisy_linear_imputation(x, removed, noise=0.0)
    for i in range(2):
        reference = NoisyLinearImputer(noise=0.0)(x[i], (~removed[i, 0]).float())
        assert torch.allclose(ours[i], reference, atol=1e-5)
    # every removed pixel is the weighted mean of its neighbours inside the image; kept pixels are untouched
    assert torch.equal(ours[~removed.expand_as(x)], x[~removed.expand_as(x)])
    padded = nn.functional.pad(ours, (1, 1, 1, 1))
    weights = nn.functional.pad(torch.ones(1, 1, 30, 30), (1, 1, 1, 1))
    kernel = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]]).view(1, 1, 3, 3)
    sums = nn.functional.conv2d(padded.reshape(6, 1, 32, 32), kernel).view_as(ours)
    degree = nn.functional.conv2d(weights, kernel)
    mean = sums / degree
    assert torch.allclose(ours[removed.expand_as(x)], mean[removed.expand_as(x)], atol=1e-5)


def test_imputation_noise_is_seeded_and_only_on_removed_pixels():
    x = images(2, 16)
    removed = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    removed[:, :, 4:12, 4:12] = True
    clean = noisy_linear_imputation(x, removed, noise=0.0)
    a = noisy_linear_imputation(x, removed, noise=0.5, generator=torch.Generator().manual_seed(7))
    b = noisy_linear_imputation(x, removed, noise=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    difference = (a - clean)[removed.expand_as(x)]
    assert 0.4 < float(difference.std()) < 0.6
    assert torch.equal(a[~removed.expand_as(x)], x[~removed.expand_as(x)])


def gradcam_removed_count(values: np.ndarray, kept_percentile: float) -> int:
    """How many pixels pytorch-grad-cam's MoRF removes: those at or above the interpolated percentile."""
    return int((values >= np.percentile(values, kept_percentile)).sum())


def test_road_matches_pytorch_grad_cam_without_noise():
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x = small_cnn(), images(3, 32)
    maps = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    percentages = (20, 30, 50, 70, 80)  # where a rounded count and grad-cam's interpolated percentile agree
    for p in percentages:
        assert gradcam_removed_count(maps[0, 0].double().numpy(), 100 - p) == round(p / 100 * 32 * 32)
    before = model_fingerprint(model)
    result = road(model, x, maps, percentages=percentages, noise=0.0, batch_size=4)
    assert_unchanged(model, before)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in predicted(model, x)]
    cams = maps[:, 0].double().numpy()
    for k, p in enumerate(percentages):
        for order, removal in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
            metric = PerturbationConfidenceMetric(removal(100 - p, NoisyLinearImputer(noise=0.0)))
            reference = metric(x, cams, targets, model, return_diff=False)
            assert relative_error(getattr(result, order)[:, k], reference) < 1e-4, (order, p)


def test_road_orders_an_oracle_map_and_puts_the_random_control_at_chance():
    model, x = CornerModel(), corner_inputs()
    oracle = road(model, x, corner_map(), percentages=(10, 20, 30), noise=0.0)
    assert (oracle.morf_mean < oracle.original - 0.2).all()  # the corner goes first: the class falls
    assert (oracle.lerf_mean > oracle.original - 0.02).all()  # the corner stays: the class holds
    assert (oracle.gap > 0.2).all()
    anti = road(model, x, corner_map(anti=True), percentages=(10, 20, 30), noise=0.0)
    assert (anti.gap < -0.2).all()
    # a map that knows nothing removes the same kind of pixels in both orders: gap near 0
    random_maps = RandomMap(model, seed=0)(corner_inputs(16))
    chance = road(model, corner_inputs(16), random_maps, percentages=(10, 20, 30), noise=0.0)
    assert abs(float(chance.gap.mean())) < 0.05 < float(oracle.gap.mean())


def test_road_is_seeded_and_does_not_depend_on_the_batch_size():
    model, x = small_cnn(), images(3, 24)
    maps = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(5))
    a = road(model, x, maps, percentages=(25, 75), batch_size=1, seed=3)
    b = road(model, x, maps, percentages=(25, 75), batch_size=5, seed=3)
    c = road(model, x, maps, percentages=(25, 75), batch_size=5, seed=4)
    assert torch.allclose(a.morf, b.morf, atol=1e-6) and torch.allclose(a.lerf, b.lerf, atol=1e-6)
    assert not torch.equal(b.morf, c.morf)
    only = road(model, x, maps, percentages=(25, 75), orders=("lerf",), seed=3)
    assert only.morf is None and torch.allclose(only.lerf, b.lerf, atol=1e-6)
    with pytest.raises(DeepscopeError, match="morf"):
        only.morf_mean


# -- pixel flipping, region perturbation, IROF ------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_flipping_matches_quantus(channels):
    import quantus

    model, x = small_cnn(), images(2, 24)
    maps = torch.rand(2, channels, 24, 24, generator=torch.Generator().manual_seed(6))
    y = predicted(model, x)
    before = model_fingerprint(model)
    # a one-channel map moves whole pixels (3 colour values): Quantus counts 48 values = 16 pixels per step
    ours = pixel_flipping(model, x, maps, features_per_step=16 if channels == 1 else 48, reduction=None,
                          batch_size=7)
    assert_unchanged(model, before)
    reference = quantus.PixelFlipping(features_in_step=48, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps.numpy(), device="cpu")
    assert ours.probabilities.shape == (2, 37)
    assert relative_error(ours.probabilities[:, 1:], reference) < 1e-4
    assert torch.allclose(ours.probabilities[:, 0], torch.softmax(model(x), 1)[[0, 1], y].detach())


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_matches_quantus(order):
    import quantus

    model, x = small_cnn(), images(2, 32)  # 32 is not a multiple of 6: partial regions at both borders
    maps = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(8))
    ours = region_perturbation(model, x, maps, patch=6, regions=12, order=order, baseline="min", batch_size=5)
    reference = quantus.RegionPerturbation(patch_size=6, regions_evaluation=12, order=order,
                                           perturb_baseline="black", disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=predicted(model, x).numpy(), a_batch=maps.numpy(), device="cpu")
    drops = ours.probabilities[:, :1] - ours.probabilities[:, 1:]
    assert relative_error(drops, reference) < 1e-4
    assert torch.allclose(ours.aopc, drops.sum(dim=1) / 13)


def test_irof_matches_quantus_given_its_mask_broadcast_over_colours(monkeypatch):
    import quantus
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    def broadcast(arr, mask, **kwargs):  # Quantus 0.6's IROF passes a one-channel mask for a colour image
        return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 calls np.trapz, gone in NumPy 2
    model, x = small_cnn(), images(2, 32) * 0.3
    maps = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(9))
    ours = irof(model, x, maps, baseline=0.0, batch_size=16)
    reference = quantus.IROF(perturb_func=broadcast, perturb_baseline=0.0, return_aggregate=False,
                             disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=predicted(model, x).numpy(), a_batch=maps.numpy(), device="cpu")
    most = int(ours.counts.max())
    for i, count in enumerate(ours.counts.tolist()):
        relative = (ours.probabilities[i, 1:count + 1] / ours.probabilities[i, 0]).double()
        padded = torch.cat([relative, relative.new_zeros(most - count)])  # Quantus pads shorter images with zeros
        quantus_aoc = count - float(torch.trapezoid(padded))
        assert quantus_aoc == pytest.approx(reference[i], rel=1e-4)
    assert ((ours.aoc > -1) & (ours.aoc < 1)).all()


def test_perturbation_metrics_rank_an_oracle_above_its_reverse_and_the_random_control_between():
    model, x = CornerModel(), corner_inputs()
    randoms = RandomMap(model, seed=1)(x)
    flipping = {name: pixel_flipping(model, x, m, features_per_step=24).auc
                for name, m in (("oracle", corner_map()), ("anti", corner_map(anti=True)), ("random", randoms))}
    assert (flipping["oracle"] < flipping["random"]).all() and (flipping["random"] < flipping["anti"]).all()
    regions = {name: region_perturbation(model, x, m, patch=4, regions=12, seed=0).aopc
               for name, m in (("oracle", corner_map()), ("anti", corner_map(anti=True)), ("random", randoms))}
    assert (regions["oracle"] > regions["random"]).all() and (regions["random"] >= regions["anti"]).all()
    assert float(regions["random"].mean()) > float(regions["anti"].mean())
    segments = torch.arange(9).view(3, 3).repeat_interleave(8, 0).repeat_interleave(8, 1).expand(4, 24, 24)
    oracle = irof(model, x, corner_map(), segments=segments)
    anti = irof(model, x, corner_map(anti=True), segments=segments)
    assert oracle.counts.tolist() == [9] * 4 and (oracle.aoc > anti.aoc + 0.1).all()


def test_random_control_sits_at_the_random_order_of_region_perturbation():
    """Chance level: a random map's MoRF, its LeRF and a random order give the same AOPC (on average)."""
    model, x = small_cnn(3), images(24, 24)
    randoms = RandomMap(model, seed=2)(x)
    values = {order: float(region_perturbation(model, x, randoms, patch=4, regions=20, order=order, seed=1)
                           .aopc.mean()) for order in ("morf", "lerf", "random")}
    gradient = Gradient(model)(x)
    informed = [float(region_perturbation(model, x, gradient, patch=4, regions=20, order=o).aopc.mean())
                for o in ("morf", "lerf")]
    spread = abs(informed[0] - informed[1])
    assert spread > 0
    assert abs(values["morf"] - values["lerf"]) < 0.5 * spread
    assert abs(values["morf"] - values["random"]) < 0.5 * spread


def test_perturbation_curves_do_not_depend_on_the_batch_size():
    model, x = small_cnn(), images(2, 16)
    maps = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(10))
    a = pixel_flipping(model, x, maps, features_per_step=20, batch_size=3)
    b = pixel_flipping(model, x, maps, features_per_step=20, batch_size=64)
    assert torch.allclose(a.probabilities, b.probabilities, atol=1e-6) and a.fractions[-1] == 1
    c = region_perturbation(model, x, maps, patch=4, regions=8, order="random", batch_size=2, seed=5)
    d = region_perturbation(model, x, maps, patch=4, regions=8, order="random", batch_size=9, seed=5)
    assert torch.allclose(c.probabilities, d.probabilities, atol=1e-6)


# -- infidelity and sensitivity ---------------------------------------------------------------------------------

def our_draws(seed, count, shape, kind="normal"):
    generator = torch.Generator().manual_seed(seed)
    draw = torch.randn if kind == "normal" else torch.rand
    return torch.stack([draw(shape, generator=generator) for _ in range(count)])


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_infidelity_matches_captum_on_the_same_perturbations(normalize, channels):
    from captum.metrics import infidelity as captum_infidelity

    model, x = small_cnn(), images(3, 16)
    maps = torch.randn(3, channels, 16, 16, generator=torch.Generator().manual_seed(11))
    samples, sigma = 6, 0.2
    noise = sigma * our_draws(5, 3 * samples, (3, 16, 16))  # row i * samples + j: perturbation j of image i

    def perturb(inputs):
        return noise, inputs - noise

    ours = infidelity(model, x, maps, samples=samples, sigma=sigma, normalize=normalize, seed=5, batch_size=4)
    reference = captum_infidelity(model, perturb, x, maps.expand(-1, 3, -1, -1), target=predicted(model, x),
                                  n_perturb_samples=samples, normalize=normalize)
    assert relative_error(ours, reference) < 1e-4


def test_infidelity_and_sensitivity_do_not_depend_on_the_batch_size(tiny_cnn):
    x = images(3, 16)
    maps = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(13))
    assert torch.allclose(infidelity(tiny_cnn, x, maps, samples=5, batch_size=2),
                          infidelity(tiny_cnn, x, maps, samples=5, batch_size=64), rtol=1e-5)
    reference = sensitivity_max(Gradient, tiny_cnn, x, samples=3, batch_size=1)
    for options in ({"batch_size": 3}, {"batch_size": 2, "common_noise": False}, {"common_noise": False}):
        assert torch.allclose(sensitivity_max(Gradient, tiny_cnn, x, samples=3, **options), reference, rtol=1e-5)


def test_infidelity_of_the_gradient_vanishes_for_small_perturbations_of_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x = images(2, 8)
    gradient = Gradient(model, absolute=False)(x)
    assert float(infidelity(model, x, gradient, normalize=False).max()) < 1e-8
    assert float(infidelity(model, x, torch.rand(2, 1, 8, 8)).min()) > 1e-3


def test_sensitivity_max_matches_captum_on_the_same_perturbations():
    from captum.metrics import sensitivity_max as captum_sensitivity

    model, x = small_cnn(), images(3, 16)
    samples, radius = 4, 0.05
    draws = our_draws(2, samples * 3, (3, 16, 16), "uniform").view(samples, 3, 3, 16, 16)  # row j * N + i
    delta = (radius * (2 * draws - 1)).transpose(0, 1).reshape(3 * samples, 3, 16, 16)  # captum: image-major

    def perturb(inputs):
        return inputs + delta

    def explain(inputs, target):
        if isinstance(inputs, tuple):  # captum passes the unperturbed inputs as a tuple and wants one back
            return (Gradient(model, absolute=False)(inputs[0], target),)
        return Gradient(model, absolute=False)(inputs, target)

    before = model_fingerprint(model)
    ours = sensitivity_max(lambda m: Gradient(m, absolute=False), model, x, samples=samples, radius=radius, seed=2,
                           batch_size=2)
    assert_unchanged(model, before)
    reference = captum_sensitivity(explain, x, perturb_func=perturb, n_perturb_samples=samples,
                                   target=predicted(model, x))
    assert relative_error(ours, reference) < 1e-4


def test_sensitivity_gives_common_noise_to_smoothgrad_and_a_new_map_to_the_random_control():
    model, x = small_cnn(), images(3, 16)
    smooth = sensitivity_max(lambda m: SmoothGrad(Gradient(m), n=8, noise=0.1), model, x, samples=3, radius=1e-6)
    assert float(smooth.max()) < 1e-3  # a tiny move, the same noisy copies: the map barely moves
    fresh = sensitivity_max(lambda m: SmoothGrad(Gradient(m), n=8, noise=0.1), model, x, samples=3, radius=1e-6,
                            common_noise=False, batch_size=6)
    assert float(fresh.min()) > 0.1  # other copies of the noise: SmoothGrad's own sampling error
    control = sensitivity_max(RandomMap, model, x, samples=5)
    assert float(control.min()) > 0.6  # uniform maps drawn afresh: |a - b| / |a| ~ sqrt(1/2)
    assert float(sensitivity_max(CenterMap, model, x, samples=3).max()) == 0


# -- average drop and increase in confidence ------------------------------------------------------------------

def test_average_drop_and_increase_match_torchcam():
    from torchcam.methods import GradCAM as TorchcamGradCAM
    from torchcam.metrics import ClassificationMetric

    model, x = small_cnn(2, classes=4), images(6, 32)
    extractor = TorchcamGradCAM(model, target_layer="2")
    try:
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(x)
        summary = metric.summary()
        scores = torch.softmax(model(x), dim=-1)  # torchcam's metric explains the scores it is given: probabilities
        cams = extractor(scores.argmax(1).tolist(), scores)[0].detach()
    finally:
        extractor.remove_hooks()
    ours = confidence_change(model, x, cams.unsqueeze(1))
    assert float(ours.drop.mean()) == pytest.approx(summary["avg_drop"], rel=1e-4)
    assert float(ours.increase.mean()) == pytest.approx(summary["conf_increase"], abs=1e-9)


def test_confidence_of_an_oracle_map_and_of_a_map_of_nothing():
    model, x = CornerModel(), corner_inputs()
    oracle = confidence_change(model, x, corner_map())
    assert float(oracle.drop.max()) < 0.01
    empty = confidence_change(model, x, 1 - corner_map())  # zero on the corner: the evidence is gone
    assert float(empty.drop.min()) > 0.3 and float(empty.increase.max()) == 0


# -- randomisation ----------------------------------------------------------------------------------------------

def test_histogram_entropy_matches_numpy_and_scipy():
    from scipy.stats import entropy

    values = torch.randn(3, 500, generator=torch.Generator().manual_seed(12)) ** 3
    values[2] = 0.25  # constant: one bin
    ours = histogram_entropy(values, bins=37)
    for row, value in zip(values, ours):
        counts, _ = np.histogram(row.numpy(), bins=37)
        assert float(value) == pytest.approx(entropy(counts), abs=1e-5)
    assert float(ours[2]) == 0


def test_emprt_scores_the_random_control_at_chance_and_flags_constant_maps(tiny_cnn):
    x = images(2, 16)
    before = model_fingerprint(tiny_cnn)
    control = efficient_mprt(RandomMap, tiny_cnn, x)
    assert torch.equal(control.rise, torch.zeros(2))
    assert_unchanged(tiny_cnn, before)
    gradient = efficient_mprt(Gradient, tiny_cnn, x)
    assert torch.isfinite(gradient.rise).all() and not gradient.randomized_constant.any()

    def builder(model):  # a map that goes flat once the model is not the user's
        return lambda inputs, target: torch.rand(len(inputs), 1, 16, 16) if model is tiny_cnn else \
            torch.zeros(len(inputs), 1, 16, 16)

    flat = efficient_mprt(builder, tiny_cnn, x)
    assert flat.randomized_constant.all() and torch.equal(flat.rise, -torch.ones(2))


def test_cascade_flags_maps_that_become_constant_instead_of_reporting_nan(tiny_cnn):
    calls = []

    def builder(model):
        calls.append(model)
        flat = len(calls) > 2  # the original and the untouched copy explain; randomised copies give flat maps
        return lambda inputs, target: torch.zeros(len(inputs), 1, 8, 8) if flat else torch.rand(len(inputs), 1, 8, 8)

    result = cascading_randomization(builder, tiny_cnn, images(3, 16), max_steps=2)
    assert result.constant.tolist() == [[False] * 3, [True] * 3, [True] * 3]
    assert result.top_layer_constant == 3 and math.isnan(result.top_layer_spearman)
    assert torch.isnan(result.spearman[1]).all() and not result.original_constant.any()
    gradient = cascading_randomization(Gradient, tiny_cnn, images(3, 16), max_steps=1)
    assert gradient.top_layer_constant == 0 and not math.isnan(gradient.top_layer_spearman)


def test_randomisation_tests_do_not_depend_on_the_batch_size(tiny_cnn):
    x = images(3, 16)
    whole = cascading_randomization(Gradient, tiny_cnn, x, max_steps=2)
    chunked = cascading_randomization(Gradient, tiny_cnn, x, max_steps=2, batch_size=2)
    assert torch.allclose(whole.maps, chunked.maps, atol=1e-6)
    assert torch.allclose(efficient_mprt(Gradient, tiny_cnn, x).rise,
                          efficient_mprt(Gradient, tiny_cnn, x, batch_size=1).rise)
    with pytest.raises(DeepscopeError, match="batch_size"):
        efficient_mprt(Gradient, tiny_cnn, x, batch_size=0)


def test_bottom_up_order_randomises_the_first_layer_first(tiny_cnn):
    result = cascading_randomization(Gradient, tiny_cnn, images(2, 16), order="bottom-up", max_steps=2)
    assert result.layers == ["0", "2"]
    with pytest.raises(DeepscopeError, match="order"):
        cascading_randomization(Gradient, tiny_cnn, images(2, 16), order="sideways")


def test_smoothed_explainer_averages_noisy_copies_with_the_last_one_clean():
    model, x = small_cnn(), images(2, 16)
    gradient = Gradient(model)
    assert torch.equal(SmoothedExplainer(gradient, 1, 0.5, 0, 4)(x, None), gradient(x))
    a = SmoothedExplainer(gradient, 6, 0.2, 3, 4)(x, None)
    b = SmoothedExplainer(gradient, 6, 0.2, 3, 5)(x, None)
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, gradient(x))


def test_smprt_keeps_the_random_control_at_one_and_moves_the_gradient(tiny_cnn):
    x = images(2, 16)
    before = model_fingerprint(tiny_cnn)
    control = smooth_mprt(RandomMap, tiny_cnn, x, samples=3, max_steps=2)
    assert torch.allclose(control.spearman[1:], torch.ones(2, 2))
    assert_unchanged(tiny_cnn, before)
    gradient = smooth_mprt(Gradient, tiny_cnn, x, samples=3)
    assert gradient.layers[0] == "0" and float(gradient.spearman[-1].mean()) < 0.9


# -- the catalogue ----------------------------------------------------------------------------------------------

FAST = {"pixel-flipping": {"features_per_step": 64}, "region-perturbation": {"regions": 6}, "irof": {"n_segments": 8},
        "infidelity": {"samples": 4}, "sensitivity-max": {"samples": 2}, "smprt": {"samples": 2, "max_steps": 2},
        "deletion": {"steps": 4}, "insertion": {"steps": 4}}


@pytest.mark.parametrize("name", list(METRICS))
def test_every_catalogue_metric_computes_one_value_per_image_and_leaves_the_model_as_it_was(name, tiny_cnn):
    entry = get_metric(name)
    assert entry.direction in ("higher", "lower") and entry.paper and entry.passes and entry.chance_note
    x = images(2, 16)
    explanation = Gradient(tiny_cnn)(x) if entry.needs == "maps" else Gradient
    before = model_fingerprint(tiny_cnn)
    values = entry.compute(tiny_cnn, x, explanation, **FAST.get(name, {}))
    assert_unchanged(tiny_cnn, before)
    assert values.shape == (2,) and torch.isfinite(values).all()
    with pytest.raises(DeepscopeError, match="unknown option"):
        entry.compute(tiny_cnn, x, explanation, sped=2)
    wrong = Gradient if entry.needs == "maps" else Gradient(tiny_cnn)(x)
    with pytest.raises(DeepscopeError, match=entry.name):
        entry.compute(tiny_cnn, x, wrong)


def test_catalogue_declares_the_chance_levels_the_controls_reach(tiny_cnn):
    x = images(3, 16)
    assert get_metric("emprt").chance == 0 and get_metric("smprt").chance == 1
    assert get_metric("cascading-randomization").chance == 1 and get_metric("road-gap").chance == 0
    for name in ("emprt", "cascading-randomization", "smprt"):
        values = get_metric(name).compute(tiny_cnn, x, RandomMap, **FAST.get(name, {}))
        assert torch.allclose(values, torch.full((3,), get_metric(name).chance)), name
    assert get_metric("road-gap").better(0.3, 0.0) and get_metric("road-morf").better(0.1, 0.3)
    with pytest.raises(DeepscopeError, match="Did you mean"):
        get_metric("road_gap")


def test_metrics_reject_bad_arguments(tiny_cnn):
    x = images(2, 16)
    maps = torch.rand(2, 1, 16, 16)
    with pytest.raises(DeepscopeError, match="one map per input"):
        road(tiny_cnn, x, maps[:1])
    with pytest.raises(DeepscopeError, match="percentages"):
        road(tiny_cnn, x, maps, percentages=(0, 50))
    with pytest.raises(DeepscopeError, match="orders"):
        road(tiny_cnn, x, maps, orders=("most",))
    with pytest.raises(DeepscopeError, match="features_per_step"):
        pixel_flipping(tiny_cnn, x, maps, features_per_step=0)
    with pytest.raises(DeepscopeError, match="order"):
        region_perturbation(tiny_cnn, x, maps, order="best")
    with pytest.raises(DeepscopeError, match="channels"):
        pixel_flipping(tiny_cnn, x, torch.rand(2, 2, 16, 16), reduction=None)
    with pytest.raises(DeepscopeError, match="segments"):
        irof(tiny_cnn, x, maps, segments=torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(DeepscopeError, match="sigma"):
        infidelity(tiny_cnn, x, maps, sigma=0)
    with pytest.raises(DeepscopeError, match="build an explanation"):
        sensitivity_max("gradient", tiny_cnn, x)
    with pytest.raises(DeepscopeError, match="baseline"):
        pixel_flipping(tiny_cnn, x, maps, baseline="grey")


# -- the real model and photos ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(mobilenet_v2_import, in20):
    from deepscope.images import load_inputs, scan_images

    found = scan_images(in20)
    return load_inputs([found.paths[0], found.paths[200]], mobilenet_v2_import.preprocess)


def test_road_and_pixel_flipping_match_the_references_on_mobilenet_v2(mobilenet_v2_import, photos):
    import quantus
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = mobilenet_v2_import.model
    before = model_fingerprint(model)
    x = photos[:1]
    maps = GradCAM(model)(x)
    y = predicted(model, x)
    for p in (30, 70):  # counts that agree with grad-cam's percentile at 224 x 224
        values = nn.functional.interpolate(maps, (224, 224), mode="bilinear")[0, 0].double().numpy()
        assert gradcam_removed_count(values, 100 - p) == round(p / 100 * 224 * 224)
    ours = road(model, x, maps, percentages=(30, 70), orders=("morf",), noise=0.0)
    cams = nn.functional.interpolate(maps, (224, 224), mode="bilinear")[:, 0].double().numpy()
    for k, p in enumerate((30, 70)):
        metric = PerturbationConfidenceMetric(RemoveMostRelevantFirst(100 - p, NoisyLinearImputer(noise=0.0)))
        reference = metric(x, cams, [ClassifierOutputSoftmaxTarget(int(y[0]))], model, return_diff=False)
        assert relative_error(ours.morf[:, k], reference) < 1e-4
    gradient = Gradient(model, absolute=False)(x)
    flipped = pixel_flipping(model, x, gradient, features_per_step=7168, reduction=None)  # 21 steps
    reference = quantus.PixelFlipping(features_in_step=7168, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=gradient.numpy(), device="cpu")
    assert relative_error(flipped.probabilities[:, 1:], reference) < 1e-4
    assert_unchanged(model, before)


def test_smoothgrad_is_less_sensitive_than_the_gradient_on_mobilenet_v2(mobilenet_v2_import, photos):
    """Yeh et al. 2019 on real photos, kept small: 2 photos, 3 perturbations, SmoothGrad with 8 copies."""
    model = mobilenet_v2_import.model
    plain = sensitivity_max(Gradient, model, photos, samples=3)
    smooth = sensitivity_max(lambda m: SmoothGrad(Gradient(m), n=8), model, photos, samples=3)
    assert (smooth < plain).all()
