"""The one module that touches a user's model: layer lookup, hooks, and temporary changes.

Everything else in deepscope asks :class:`Probe` for activations and gradients. A probe is a context
manager: on entry it puts the model in eval mode and turns off the parameters' ``requires_grad``
(gradients then flow to the input and to captured activations only, which roughly halves the
backward cost); on exit -- also when the body raises -- it removes every hook it registered and
restores each module's ``training`` flag and each parameter's ``requires_grad`` exactly as they were.
Weights and module types are never changed.

Example
-------
>>> with Probe(model, layers=["features.18"]) as probe:
...     logits = probe(inputs)
...     features = probe.activations["features.18"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from deepscope.errors import LayerNotFoundError, UnsupportedModelError, did_you_mean

GradientRule = Callable[[torch.Tensor], torch.Tensor]


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every sub-module, in definition order (``features.18``, ``layer4.1.conv2``)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name``.

    Raises
    ------
    LayerNotFoundError
        If there is no such layer; the message lists the closest names.
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    hint = did_you_mean(name, [n for n in modules if n]) or " Run `deepscope layers MODEL` to list them."
    raise LayerNotFoundError(f"the model has no layer {name!r}.{hint}")


def check_hookable(model: nn.Module) -> None:
    """Refuse a TorchScript model, whose modules take no hooks: it can be run and differentiated, but no layer
    of it can be read (layers, CAMs, neurons, features at a layer, guided backprop).

    Raises
    ------
    UnsupportedModelError
        For a ``torch.jit.ScriptModule``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            "this is a TorchScript model, and TorchScript models refuse the hooks deepscope needs to read a layer; "
            "use a non-scripted model: a torchvision/timm name, or ARCH@weights.pth with a state_dict.")


class Probe:
    """Capture activations (and let gradients reach them) for named layers during forward passes.

    Parameters
    ----------
    model : nn.Module
        The user's model; it is put in eval mode only for the duration of the ``with`` block.
    layers : sequence of str
        Layers whose outputs are captured into :attr:`activations` at every forward pass.
    detach : bool
        Store detached activations (feature extraction, no gradients needed). When False, the stored
        tensors are part of the graph, so ``torch.autograd.grad(score, probe.activations[name])`` works;
        a following in-place operation (``ReLU(inplace=True)``) cannot alter them.
    train : bool
        Keep (rather than set) eval mode; for code that needs the model's training behaviour.
    start_graph : bool
        Make each captured activation a leaf that requires grad: the forward pass before it records no
        graph (cheaper), gradients reach the activations but not the input or earlier captured layers.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] = (), *, detach: bool = False, train: bool = False,
                 start_graph: bool = False):
        self.model = model
        self.layers = list(layers)
        self.detach = detach
        self.train = train
        self.start_graph = start_graph
        self.activations: dict[str, torch.Tensor] = {}
        if self.layers:
            check_hookable(model)
        self._modules = {name: get_layer(model, name) for name in self.layers}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved_training: list[tuple[nn.Module, bool]] = []
        self._saved_requires_grad: list[tuple[nn.Parameter, bool]] = []
        self._active = False

    # -- context management -------------------------------------------------------------------------
    def __enter__(self) -> "Probe":
        if self._active:
            raise RuntimeError("a Probe cannot be entered twice; make a new one")
        self._active = True
        try:
            self._saved_training = [(m, m.training) for m in self.model.modules()]
            self._saved_requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
            if not self.train:
                self.model.eval()
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._capture_hook(name)))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, training in self._saved_training:
            module.training = training
        for parameter, requires_grad in self._saved_requires_grad:
            parameter.requires_grad_(requires_grad)
        self._saved_training.clear()
        self._saved_requires_grad.clear()
        self.activations.clear()
        self._active = False

    # -- forward and hooks -----------------------------------------------------------------------------
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the model; captured activations are replaced by this pass's."""
        if not self._active:
            raise RuntimeError("use the Probe inside a `with` block")
        return self.model(inputs)

    def _capture_hook(self, name: str):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(tensor, torch.Tensor):
                return None
            if self.detach or not torch.is_grad_enabled():
                self.activations[name] = tensor.detach()
                return None
            if self.start_graph:
                tensor = tensor.detach().requires_grad_(True)
            # Keep the module's own output; the model continues on a copy, so an in-place op
            # after this layer cannot overwrite what was captured.
            self.activations[name] = tensor
            copy = tensor.clone()
            return (copy, *output[1:]) if isinstance(output, tuple) else copy
        return hook

    def rewrite_output_gradients(self, modules: Iterable[nn.Module], rule: GradientRule) -> None:
        """During backward, pass each given module's output gradient through ``rule`` first.

        This is how guided backpropagation changes the activation functions' backward pass without
        replacing any module: a forward hook attaches a gradient hook to the module's output tensor.
        The hooks go away when the probe exits.
        """
        if not self._active:
            raise RuntimeError("use the Probe inside a `with` block")
        check_hookable(self.model)

        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(rule)

        for module in modules:
            self._handles.append(module.register_forward_hook(hook))

    def capture_inputs(self, layers: Iterable[str]) -> None:
        """Also capture each named layer's first input, as ``activations[f"{name}:input"]``.

        For example the input of a classifier's last ``nn.Linear`` (the penultimate features). A
        forward pre-hook, detached like the output captures, removed when the probe exits.
        """
        if not self._active:
            raise RuntimeError("use the Probe inside a `with` block")
        check_hookable(self.model)
        for name in layers:
            def hook(module, args, key=f"{name}:input"):
                if args and isinstance(args[0], torch.Tensor):
                    tensor = args[0]
                    self.activations[key] = tensor.detach() if self.detach or not torch.is_grad_enabled() else tensor
            self._handles.append(get_layer(self.model, name).register_forward_pre_hook(hook))

    def replace_output(self, name: str, rule: Callable[[torch.Tensor], torch.Tensor | None]) -> None:
        """At every forward pass, replace layer ``name``'s output by ``rule(output)`` (``None`` keeps it).

        Used to run the rest of a model from a given activation (incremental occlusion) or to ablate
        a layer's output. The hook goes away when the probe exits.
        """
        if not self._active:
            raise RuntimeError("use the Probe inside a `with` block")
        check_hookable(self.model)

        def hook(module, args, output):
            return rule(output)

        self._handles.append(get_layer(self.model, name).register_forward_hook(hook))

    def hook_count(self) -> int:
        """Hooks this probe has registered and not yet removed."""
        return len(self._handles)


def input_gradient(scores: torch.Tensor, inputs: torch.Tensor, *extra: torch.Tensor,
                   retain_graph: bool = False) -> tuple[torch.Tensor, ...]:
    """Gradient of ``scores.sum()`` w.r.t. ``inputs`` (and any ``extra`` tensors), per sample.

    Samples are independent in eval mode, so one backward of the sum gives every sample's gradient.
    """
    return torch.autograd.grad(scores.sum(), (inputs, *extra), retain_graph=retain_graph)


def fast_layout(inputs: torch.Tensor) -> torch.Tensor:
    """``inputs`` in the memory layout models run fastest in: channels-last for image batches on the CPU.

    oneDNN's channels-last convolutions run MobileNet-V2 about 1.7x faster than the default layout
    (forward and backward, 2 threads). The values are the same; the sums inside convolutions run in
    another order, so results can differ in the last digits (1e-6 relative), which is enough to flip a
    ReLU6 gate that sits within that distance of 0 or 6.
    """
    if inputs.device.type == "cpu" and inputs.ndim == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def batched_forward(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The model's output for ``inputs`` under ``torch.inference_mode()``, computed in chunks."""
    with Probe(model), torch.inference_mode():
        return torch.cat([model(chunk) for chunk in inputs.split(batch_size)])
