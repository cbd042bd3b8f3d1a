"""The pytorch-grad-cam agreement of test_cam_reference.py, on the default model (EfficientNet-Lite0, real weights)."""

from test_cam_reference import check_agreement, photos  # noqa: F401  (photos is a fixture)

from deepscope.models.zoo import load_model


def test_cams_agree_with_pytorch_grad_cam_on_default_model(photos):  # noqa: F811
    check_agreement(load_model("default"), photos, "bn2", "blocks.1")
