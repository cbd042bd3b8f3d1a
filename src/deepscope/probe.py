"""The one module that touches a user's model: layer lookup, hooks, and temporary changes.

Everything else in deepscope asks :class:`Probe` for activations and gradients. A probe is a context
manager: on entry it puts the model in eval mode and turns off the parameters' ``requires_grad``
(gradients then flow to the input and to captured activations only, which roughly halves the
backward cost); on exit -- also when the body raises -- it removes every hook it registered and
restores each module's ``training`` flag and each parameter's ``requires_grad`` exactly as they were.
Weights and module types are never changed.

Methods that change the backward pass (guided backprop, LRP) do it through the probe too: a gradient
rule on a module's output (:meth:`Probe.rewrite_output_gradients`), a custom backward for a whole module
(:meth:`Probe.replace_backward`), or a rule for torch functions called in the model's own ``forward``
code, such as a residual ``x + y`` (:meth:`Probe.route_functions`). All of them end with the probe.

Example
-------
>>> with Probe(model, layers=["features.18"]) as probe:
...     logits = probe(inputs)
...     features = probe.activations["features.18"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from deepscope.errors import LayerNotFoundError, UnsupportedModelError, did_you_mean

GradientRule = Callable[[torch.Tensor], torch.Tensor]
#: ``backward(saved_inputs, grad_output) -> one gradient (or None) per saved input``.
Backward = Callable[[tuple[torch.Tensor, ...], torch.Tensor], Sequence[torch.Tensor | None]]
#: ``connect(input, output) -> (tensors the output depends on, their backward)``; see :meth:`Probe.replace_backward`.
Connect = Callable[[torch.Tensor, torch.Tensor], tuple[tuple[torch.Tensor, ...], Backward]]
#: ``handler(func, args, kwargs) -> result``, or ``NotImplemented`` to run the call as usual.
FunctionHandler = Callable[[Callable, tuple, dict], Any]


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
        self._pending: dict[nn.Module, list[torch.Tensor | None]] = {}
        self._function_handlers: list[FunctionHandler] = []
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
        self._pending.clear()
        self._function_handlers.clear()
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
        with ExitStack() as stack:
            for handler in self._function_handlers:
                stack.enter_context(_FunctionRouter(handler))
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
        forward pre-hook, removed when the probe exits; detached like the output captures, or graph-connected
        with the layer running on a copy (so an in-place layer cannot alter what was captured, and
        ``torch.autograd.grad(score, probe.activations[f"{name}:input"])`` is the gradient at the layer's input).
        """
        if not self._active:
            raise RuntimeError("use the Probe inside a `with` block")
        check_hookable(self.model)
        for name in layers:
            def hook(module, args, key=f"{name}:input"):
                if not args or not isinstance(args[0], torch.Tensor):
                    return None
                tensor = args[0]
                if self.detach or not torch.is_grad_enabled():
                    self.activations[key] = tensor.detach()
                    return None
                self.activations[key] = tensor
                return (tensor.clone(), *args[1:])
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

    def replace_backward(self, module: nn.Module, connect: Connect) -> None:
        """Run ``module`` without recording a graph and give its output a backward of the caller's choosing.

        At every call whose first input requires grad (with grad mode on), the module runs on
        ``input.detach()``, so autograd saves nothing inside it; then ``connect(input, output)`` returns
        the tensors the output is to depend on -- usually ``(input,)``, or the input of an earlier module
        to skip over both -- and ``backward(those tensors, grad_output)``, which returns one gradient per
        tensor (see :func:`attach_backward`). Calls on inputs that need no gradient (inside another
        replaced module, under ``torch.no_grad()``) run unchanged. This is how LRP puts a relevance rule
        on a layer without changing the layer. The hooks go away when the probe exits.
        """
        if not self._active:
            raise RuntimeError("use the Probe inside a `with` block")
        pending = self._pending.setdefault(module, [])

        def pre_hook(module, args):
            first = args[0] if args else None
            if not (isinstance(first, torch.Tensor) and first.requires_grad and torch.is_grad_enabled()):
                pending.append(None)
                return None
            pending.append(first)
            return (first.detach(), *args[1:])

        def hook(module, args, output):
            first = pending.pop() if pending else None
            if first is None or not isinstance(output, torch.Tensor):
                return None
            inputs, backward = connect(first, output)
            return attach_backward(output, inputs, backward)

        self._handles.append(module.register_forward_pre_hook(pre_hook))
        self._handles.append(module.register_forward_hook(hook))

    def route_functions(self, handler: FunctionHandler) -> None:
        """During the model calls of this probe, offer every torch function call to ``handler`` first.

        ``handler(func, args, kwargs)`` returns the call's result, or ``NotImplemented`` to run it as usual.
        It sees the calls of the model's own ``forward`` code (``x + y``, ``F.relu``, ``torch.cat``) as well as
        those inside modules; torch calls made by the handler itself are not routed again. The routing
        (a :class:`torch.overrides.TorchFunctionMode`) is active only while :meth:`__call__` runs the model.
        """
        if not self._active:
            raise RuntimeError("use the Probe inside a `with` block")
        self._function_handlers.append(handler)

    def hook_count(self) -> int:
        """Hooks this probe has registered and not yet removed."""
        return len(self._handles)


class _FunctionRouter(TorchFunctionMode):
    def __init__(self, handler: FunctionHandler):
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = self.handler(func, args, kwargs)
        return func(*args, **kwargs) if result is NotImplemented else result


class AttachedBackward(torch.autograd.Function):
    """Identity on a tensor computed without a graph; its backward is the given function of the saved inputs."""

    @staticmethod
    def forward(ctx, backward, box, *inputs):
        ctx.backward_rule = backward
        ctx.save_for_backward(*inputs)
        return box[0]  # passed in a list, so autograd treats it as a new output (no copy, no view)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        return (None, None, *ctx.backward_rule(ctx.saved_tensors, grad_output))


def attach_backward(output: torch.Tensor, inputs: Sequence[torch.Tensor], backward: Backward) -> torch.Tensor:
    """``output`` (computed without a graph) as a tensor whose gradient flows to ``inputs`` through ``backward``.

    ``backward(inputs, grad_output)`` returns one gradient (or None) per input; ``inputs`` are saved for it,
    so an in-place change to one of them afterwards makes the backward pass raise instead of computing with
    changed values. The returned tensor is ``output`` itself (no copy) unless ``output`` is a view or already
    part of a graph.
    """
    if output._is_view() or output.requires_grad:
        output = output.detach().clone()
    return AttachedBackward.apply(backward, [output], *inputs)


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
