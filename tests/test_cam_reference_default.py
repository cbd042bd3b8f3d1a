"""The pytorch-grad-cam agreement of test_cam_reference.py, on the default model (EfficientNet-Lite0, real weights)."""

import copy

from torch import nn

from test_cam_reference import check_agreement, check_fullgrad, photos  # noqa: F401  (photos: a fixture)

from deepscope.models.zoo import load_model


def test_cams_agree_with_pytorch_grad_cam_on_default_model(photos):  # noqa: F811
    check_agreement(load_model("default"), photos, "bn2", "blocks.1", "bn1")


def test_fullgrad_agrees_with_pytorch_grad_cam_on_default_model(photos):  # noqa: F811
    """timm's BatchNormAct2d is batch norm and ReLU6 in one module; pytorch-grad-cam skips it (it tests exact types)
    and would read it after the activation if it did not. Its peer is the same net with each written as
    ``BatchNorm2d`` then the activation, so pytorch-grad-cam reads every batch norm before its activation."""
    from timm.layers import BatchNormAct2d

    loaded = load_model("default")
    peer = copy.deepcopy(loaded.model)
    for name, module in list(peer.named_modules()):
        if type(module) is BatchNormAct2d:
            norm = nn.BatchNorm2d(module.num_features, eps=module.eps)
            norm.load_state_dict(module.state_dict())
            parent, _, child = name.rpartition(".")
            setattr(peer.get_submodule(parent) if parent else peer, child,
                    nn.Sequential(norm, module.drop, module.act).eval())
    check_fullgrad(loaded, photos, peer)
