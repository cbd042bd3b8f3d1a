"""The model zoo: names, files and checkpoints give (model, preprocessing, classes); mistakes explain themselves."""

import pytest
import torch
import torchvision

from conftest import require
from deepscope.classify import classify
from deepscope.errors import ModelSpecError
from deepscope.images import scan_images
from deepscope.models.classes import imagenet_classes
from deepscope.models.zoo import load_model


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "densenet121", "mobilenet_v2", "vgg11"])
def test_torchvision_architectures_load_without_download(name):
    loaded = load_model(name, pretrained=False)
    assert not loaded.model.training
    assert len(loaded.classes) == 1000 and loaded.preprocess.input_size == 224
    with torch.inference_mode():
        assert loaded.model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_timm_names_load():
    loaded = load_model("timm:resnet18", pretrained=False)
    assert loaded.preprocess.input_size == 224


def test_unknown_names_suggest_alternatives(tmp_path):
    with pytest.raises(ModelSpecError, match="Did you mean: resnet18"):
        load_model("resnet-18", pretrained=False)
    with pytest.raises(ModelSpecError, match="missing.tflite"):
        load_model(str(tmp_path / "missing.tflite"))


def test_state_dict_is_loaded_weights_only(tmp_path):
    source = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = load_model(f"resnet18@{path}")
    assert len(loaded.classes) == 7
    assert torch.equal(loaded.model.fc.weight, source.fc.weight)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelSpecError, match="do not fit"):
        load_model(f"resnet18@{tmp_path / 'wrong.pth'}")
    # a pickled object (not weights) is refused by weights_only loading
    torch.save({"evil": object.__new__(torchvision.models.ResNet)}, tmp_path / "pickle.pth")
    with pytest.raises(ModelSpecError, match="weights-only"):
        load_model(f"resnet18@{tmp_path / 'pickle.pth'}")


def test_torchscript_file(tmp_path):
    scripted = torch.jit.script(torchvision.models.mobilenet_v2(num_classes=1000).eval())
    scripted.save(str(tmp_path / "m.pt"))
    loaded = load_model(str(tmp_path / "m.pt"))
    with torch.inference_mode():
        assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelSpecError, match="not a TorchScript file"):
        load_model(str(tmp_path / "junk.pt"))


def test_default_model_is_efficientnet_lite0_with_real_weights_and_scores_on_in20(in20):
    loaded = load_model("default")
    assert loaded.name == "efficientnet_lite0"
    result = classify(loaded, scan_images(in20, loaded.classes), batch_size=50)
    assert len(result.paths) == 500
    # measured 72.2% top-1 / 92.4% top-5 on these 500 photos
    assert result.accuracy(1) >= 0.71 and result.accuracy(5) >= 0.90


def test_class_list_matches_the_reference_synsets(data):
    lines = require(data / "imagenet" / "synset_words.txt").read_text().splitlines()
    classes = imagenet_classes()
    assert [line.split()[0] for line in lines] == list(classes.wnids)
    assert classes.index("n02099601") == 207 == classes.index("Golden Retriever")
