"""Which layer a report section looks at when the user names none."""

from __future__ import annotations

from torch import nn

from deepscope.errors import UnsupportedModelError


def block_layer(model: nn.Module, fraction: float = 2 / 3) -> str:
    """A block about ``fraction`` of the way through the network.

    The network's main sequence of blocks is the numbered children of the module that has the most
    (``features.0`` ... ``features.18`` in MobileNet-V2, ``blocks.0`` ... ``blocks.6`` in timm's EfficientNets),
    or of the outermost modules tied for the most, in order (``layer1.0`` ... ``layer4.1`` in ResNet-18); a model
    without numbered blocks gets a convolution at that depth.
    """
    containers: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        numbered = [child for child, _ in module.named_children() if child.isdigit()]
        if len(numbered) > 1:
            containers[name] = [f"{name}.{child}" if name else child for child in numbered]
    if containers:
        most = max(len(blocks) for blocks in containers.values())
        tied = {name: members for name, members in containers.items() if len(members) == most}
        depth = min(name.count(".") for name in tied)
        blocks = [block for name, members in tied.items() if name.count(".") == depth for block in members]
        return blocks[min(len(blocks) - 1, int(fraction * len(blocks)))]
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise UnsupportedModelError("the model has neither a sequence of blocks nor a convolution to look into.")
    return convs[min(len(convs) - 1, int(fraction * len(convs)))]
