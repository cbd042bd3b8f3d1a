"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019, "LRP: an overview").

LRP starts from the target logit and hands it back layer by layer: each layer splits the relevance of its
outputs among its inputs by a rule (:mod:`.rules`), so that (up to what biases absorb) the relevance of
the input pixels sums to the logit. A *composite* says which rule each layer gets, with the same layer
assignment as zennit's composites of the same names:

``epsilon-plus-flat`` (default)
    flat for the first conv/linear layer, z+ for the other convolutions, epsilon for ``nn.Linear``.
``epsilon-gamma-box``
    z-box for the first convolution (needs the input range: ``preprocess``, or ``low``/``high``), gamma for
    the other convolutions, epsilon for ``nn.Linear``.
``epsilon-alpha2-beta1``
    alpha=2, beta=1 for every convolution, epsilon for ``nn.Linear``.

Everywhere, activations and unmerged BatchNorm pass relevance unchanged, sums and average pooling split it
in proportion (see :mod:`.canonizers`, which also handles BatchNorm merging, residual additions,
functional pooling and squeeze-excitation). ``rules={"features.0": "w-square"}`` overrides single layers.
One forward and one backward pass per batch, as zennit: each rule is the custom backward of its layer,
attached through :meth:`deepscope.probe.Probe.replace_backward`; nothing in the model is rewritten, not
even for BatchNorm merging (the merged weights exist only inside the rules).

Differs from the protocol: the map is the relevance itself (N, C, H, W), signed, in logit units. Summed
over channels and pixels it is the target logit less what the biases (and stabilisers) absorb: the logit
itself for a bias-free ReLU network with ``epsilon=0``, far from it for a network whose biases (BatchNorm
shifts) carry much of the logit. Display it reduced with :func:`deepscope.maps.reduce_channels` (``"sum"``,
keeping the sign) and a diverging colour map centred on 0. The relevance starts as
``output * d score / d output``: for a class target, the target logit alone. A model whose structure LRP
cannot follow raises :class:`~deepscope.errors.UnsupportedModelError` -- a layer with its own ``forward``, a
sigmoid or softmax module outside a squeeze-excitation block, anything in the ``forward`` code without a
rule (a product of activations, layer normalisation, ...) -- never a silently different answer.

Differs from the papers: the rules follow zennit 0.5.1's formulas (see :mod:`.rules`), and the defaults are
zennit's (``epsilon=1e-6``, ``gamma=0.25``, stabiliser 1e-6); a larger ``epsilon`` absorbs weak and
contradictory relevance and gives sparser, less noisy maps (Montavon et al. 2019).

LRP is patented. As the README of LXT (a library by LRP's authors) puts it, it can be used free of charge
for personal and scientific purposes only; other use may need a licence from the patent holder.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from deepscope.attribution.base import Attribution
from deepscope.attribution.lrp.canonizers import (AVERAGE_POOLS, BATCH_NORMS, CANONIZERS, PASS_ACTIVATIONS,
                                                  REFUSED_ACTIVATIONS, check_graph, function_rules,
                                                  squeeze_excitation_types)
from deepscope.attribution.lrp.rules import (CONV_TYPES, RULES, Affine, check_affine, check_batch_norm,
                                             pass_through, proportional)
from deepscope.errors import DeepscopeError, UnsupportedModelError, did_you_mean
from deepscope.maps import Display
from deepscope.probe import Probe, fast_layout, get_layer
from deepscope.targets import Target, resolve_target, target_scores

__all__ = ["LRP", "COMPOSITES", "RULES", "CANONIZERS"]


@dataclass(frozen=True)
class Composite:
    """Which rule each affine layer gets: one for the first layer of ``first_types``, one for the other
    convolutions, one for ``nn.Linear``."""

    conv: str
    linear: str
    first: str | None = None
    first_types: tuple[type, ...] = CONV_TYPES


COMPOSITES = {
    "epsilon-plus-flat": Composite(conv="z-plus", linear="epsilon", first="flat", first_types=(*CONV_TYPES, nn.Linear)),
    "epsilon-gamma-box": Composite(conv="gamma", linear="epsilon", first="z-box"),
    "epsilon-alpha2-beta1": Composite(conv="alpha-beta", linear="epsilon"),
}


@dataclass
class _Plan:
    """What to attach for one call: an affine rule per layer, and the modules that pass or pool."""

    affine: dict[nn.Module, tuple[str, str]]  # module -> (name, rule name)
    norms: dict[nn.Module, str]               # BatchNorm -> name
    passes: list[nn.Module]
    pools: list[nn.Module]


def _number(option: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise DeepscopeError(f"{option} must be a number {'> 0' if positive else '>= 0'}, got {value!r}.")
    return float(value)


class LRP(Attribution):
    """Layer-wise Relevance Propagation with a composite of rules (see the module docstring).

    Parameters
    ----------
    model : nn.Module
    composite : str
        ``"epsilon-plus-flat"``, ``"epsilon-gamma-box"`` or ``"epsilon-alpha2-beta1"``.
    epsilon : float
        The epsilon rule's stabiliser (``nn.Linear`` layers in every composite); 0 gives LRP-0.
    gamma : float
        How much the gamma rule favours positive contributions.
    stabilizer : float
        The small number added to the denominators of the other rules.
    rules : mapping of str to str, optional
        Rules for single conv/linear layers by name, overriding the composite, e.g. ``{"features.0": "w-square"}``;
        the names of :data:`RULES`: epsilon, gamma, z-plus, alpha-beta (alpha=2, beta=1), flat, w-square, z-box.
    canonizers : "auto" or sequence of str
        Which of :data:`CANONIZERS` to apply; ``"auto"`` (all) adapts to the model. Without
        ``"residual-sum"`` a model with residual additions is refused.
    preprocess : Preprocess, optional
        The model's preprocessing; its mean/std give the input range of the z-box rule (pixels in [0, 1]).
    low, high : float or tensor, optional
        The z-box input range in model-input space instead, broadcastable to (1, C, H, W).
    """

    name = "lrp"
    per_channel = True
    #: signed relevance, summed over colour channels (what adds up to the logit)
    display = Display("sum", signed=True)

    def __init__(self, model: nn.Module, composite: str = "epsilon-plus-flat", *, epsilon: float = 1e-6,
                 gamma: float = 0.25, stabilizer: float = 1e-6, rules: Mapping[str, str] | None = None,
                 canonizers: str | Iterable[str] = "auto", preprocess=None,
                 low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None):
        super().__init__(model)
        if composite not in COMPOSITES:
            raise DeepscopeError(f"unknown LRP composite {composite!r}; choose one of {', '.join(COMPOSITES)}."
                                 f"{did_you_mean(str(composite), COMPOSITES)}")
        self.composite = composite
        self.epsilon, self.gamma = _number("epsilon", epsilon), _number("gamma", gamma)
        self.stabilizer = _number("stabilizer", stabilizer, positive=True)
        self.rules = dict(rules or {})
        for layer, rule in self.rules.items():
            if rule not in RULES:
                raise DeepscopeError(f"unknown LRP rule {rule!r} for layer {layer!r}; choose one of "
                                     f"{', '.join(RULES)}.{did_you_mean(str(rule), RULES)}")
            module = get_layer(model, layer)
            if not isinstance(module, (*CONV_TYPES, nn.Linear)):
                raise DeepscopeError(f"rules apply to convolution and nn.Linear layers; {layer!r} is a "
                                     f"{type(module).__name__}.")
        self.canonizers = tuple(CANONIZERS if canonizers == "auto" else
                                [canonizers] if isinstance(canonizers, str) else canonizers)
        for canonizer in self.canonizers:
            if canonizer not in CANONIZERS:
                raise DeepscopeError(f"unknown canonizer {canonizer!r}; choose from {', '.join(CANONIZERS)} or "
                                     f"'auto'.{did_you_mean(str(canonizer), CANONIZERS)}")
        self.preprocess, self.low, self.high = preprocess, low, high
        self._bounds = self._input_bounds()
        self._plan()  # refuses a model LRP cannot handle before any work

    # -- configuration ---------------------------------------------------------------------------------
    def _input_bounds(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if (self.low is None) != (self.high is None):
            raise DeepscopeError("give both low and high (the z-box input range), or neither.")
        if self.low is not None:
            if self.preprocess is not None:
                raise DeepscopeError("give the z-box input range either as preprocess or as low/high, not both.")
            low, high = (torch.as_tensor(v, dtype=torch.float64) for v in (self.low, self.high))
        elif self.preprocess is not None:  # float64 here; the rule uses the input's dtype
            mean = torch.tensor(self.preprocess.mean, dtype=torch.float64).view(1, -1, 1, 1)
            std = torch.tensor(self.preprocess.std, dtype=torch.float64).view(1, -1, 1, 1)
            low, high = -mean / std, (1 - mean) / std
        else:
            return None
        if bool((low > high).any()):
            raise DeepscopeError("low must not exceed high (the z-box input range).")
        return low, high

    def layer_rules(self) -> dict[str, str]:
        """The rule of every convolution and ``nn.Linear`` layer, by name (composite plus ``rules``)."""
        return {name: rule for name, rule in self._plan().affine.values()}

    def _plan(self) -> _Plan:
        composite = COMPOSITES[self.composite]
        gates = squeeze_excitation_types() if "squeeze-excitation" in self.canonizers else ()
        plan = _Plan({}, {}, [], [])
        inside_gate: set[int] = set()
        first_done = composite.first is None
        for name, module in self.model.named_modules():
            if id(module) in inside_gate:
                continue
            if isinstance(module, gates):
                plan.passes.append(module)
                inside_gate.update(id(m) for m in module.modules())
            elif isinstance(module, (*CONV_TYPES, nn.Linear)):
                check_affine(module, name)
                if not first_done and isinstance(module, composite.first_types):
                    rule, first_done = composite.first, True
                else:
                    rule = composite.conv if isinstance(module, CONV_TYPES) else composite.linear
                plan.affine[module] = (name, self.rules.get(name, rule))
            elif isinstance(module, BATCH_NORMS):
                check_batch_norm(module, name)
                plan.norms[module] = name
            elif isinstance(module, PASS_ACTIVATIONS):
                plan.passes.append(module)
            elif isinstance(module, AVERAGE_POOLS):
                plan.pools.append(module)
            elif isinstance(module, REFUSED_ACTIVATIONS):
                raise UnsupportedModelError(
                    f"LRP has no rule for layer {name!r} ({type(module).__name__}) outside a squeeze-excitation "
                    "block: its output is not 0 at 0. Explain the logits before it, or use gradient or ig.")
            elif isinstance(module, torch.jit.ScriptModule):
                raise UnsupportedModelError("LRP needs an eager PyTorch model; TorchScript modules hide their "
                                            "layers from hooks. Load the architecture's Python class instead.")
        if not plan.affine:
            raise UnsupportedModelError("LRP found no convolution or nn.Linear layer in this model.")
        if "z-box" in {rule for _, rule in plan.affine.values()} and self._bounds is None:
            raise DeepscopeError("the z-box rule (composite 'epsilon-gamma-box') needs the input range: pass "
                                 "preprocess=loaded.preprocess, or low= and high= in model-input space.")
        return plan

    def _affine_rule(self, rule: str, x: torch.Tensor, nonnegative: bool | None):
        options = {"epsilon": {"epsilon": self.epsilon}, "gamma": {"gamma": self.gamma, "stabilizer": self.stabilizer}}
        kwargs = options.get(rule, {"stabilizer": self.stabilizer}) | {"nonnegative": nonnegative}
        if rule == "z-box":
            low, high = self._bounds
            kwargs.update(low=low.to(x), high=high.to(x))
        return partial(RULES[rule], **kwargs)

    # -- the computation ---------------------------------------------------------------------------------
    def _attach(self, probe: Probe, plan: _Plan, model_input: torch.Tensor) -> None:
        """Attach every rule through the probe; BatchNorm merges are decided on the actual tensors."""
        produced: dict[int, tuple[weakref.ref, nn.Module, torch.Tensor]] = {}
        rectified: dict[int, weakref.ref] = {}  # outputs of ReLU/ReLU6 modules: the rules need not check their sign
        merge = "merge-batchnorm" in self.canonizers

        def nonnegative(x: torch.Tensor) -> bool | None:
            ref = rectified.get(id(x))
            return True if ref is not None and ref() is x else None

        def affine_backward(rule, layer: Affine):
            def backward(saved, relevance):
                return (rule(layer, saved[0], relevance),)
            return backward

        def connect_affine(module, name, rule_name):
            def connect(x, output):
                if rule_name == "z-box" and x is not model_input:
                    raise UnsupportedModelError(f"the z-box rule needs the model input, but layer {name!r} gets "
                                                "another tensor; use rules= to give it another rule.")
                produced[id(output)] = (weakref.ref(output), module, x)
                rule = self._affine_rule(rule_name, x, nonnegative(x))
                return (x,), affine_backward(rule, Affine(module, None, name))
            return connect

        def connect_norm(norm, name):
            def connect(x, output):
                origin = produced.get(id(x)) if merge else None
                if origin is not None and origin[0]() is x:
                    _, module, layer_input = origin
                    layer_name, rule_name = plan.affine[module]
                    if module.weight.shape[0] == norm.num_features:
                        layer = Affine(module, norm, f"{layer_name} + {name}")
                        rule = self._affine_rule(rule_name, layer_input, nonnegative(layer_input))
                        return (layer_input,), affine_backward(rule, layer)
                return (x,), pass_through
            return connect

        for module, (name, rule_name) in plan.affine.items():
            probe.replace_backward(module, connect_affine(module, name, rule_name))
        for norm, name in plan.norms.items():
            probe.replace_backward(norm, connect_norm(norm, name))
        def connect_rectifier(x, output):
            rectified[id(output)] = weakref.ref(output)
            return (x,), pass_through

        for module in plan.passes:
            rectifier = type(module) in (nn.ReLU, nn.ReLU6)
            probe.replace_backward(module, connect_rectifier if rectifier else lambda x, output: ((x,), pass_through))
        for pool in plan.pools:
            probe.replace_backward(pool, lambda x, output, pool=pool: ((x,), proportional(pool.forward, self.stabilizer)))
        probe.route_functions(function_rules(set(self.canonizers), self.stabilizer))

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        plan = self._plan()
        with Probe(self.model) as probe, torch.enable_grad():
            x = fast_layout(inputs).clone().requires_grad_(True)
            self._attach(probe, plan, x)
            output = probe(x)
            check_graph(output)
            resolved = resolve_target(target, output)
            start = output.detach().requires_grad_(True)
            (score_gradient,) = torch.autograd.grad(target_scores(start, resolved).sum(), start)
            (relevance,) = torch.autograd.grad(output, x, score_gradient * start.detach())
        return relevance.contiguous()
