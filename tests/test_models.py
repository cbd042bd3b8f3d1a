"""The model zoo: names, files and checkpoints give (model, preprocessing, classes); mistakes explain themselves."""

import pytest
import torch
import torchvision

from conftest import require
from deepscope.classify import classify
from deepscope.errors import AmbiguousClassError, DeepscopeWarning, ModelSpecError
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


def test_imported_reference_mobilenet_v2_scores_on_in20(mobilenet_v2_import, in20):
    result = classify(mobilenet_v2_import, scan_images(in20, mobilenet_v2_import.classes), batch_size=50)
    assert len(result.paths) == 500
    # measured 68.6% top-1 / 90.2% top-5 (the float reference of the README: 69.0% / 90.4%)
    assert result.accuracy(1) >= 0.685 and result.accuracy(5) >= 0.895


# -- hardening: class names, model files, checkpoints -------------------------------------------------------------
@pytest.mark.parametrize("name,candidates", [("crane", (134, 517)), ("cardigan", (264, 474)), ("maillot", (638, 639)),
                                             ("panda", (387, 388))])
def test_a_name_two_classes_share_is_refused_with_the_candidates(name, candidates):
    classes = imagenet_classes()
    with pytest.raises(AmbiguousClassError) as error:
        classes.index(name)
    message = str(error.value)
    for index in candidates:
        assert f"{index} " in message and classes.wnids[index] in message
    assert "index or the WordNet id" in message
    for index in candidates:  # each one can be named
        assert classes.index(str(index)) == index == classes.index(classes.wnids[index]) == classes.index(index)


def test_a_readable_name_wins_over_another_class_s_synonym():
    classes = imagenet_classes()
    assert classes.index("partridge") == 86  # not the ruffed grouse (82), whose synonyms include partridge
    assert classes.index("crayfish") == 124 and classes.index("tench") == 0 == classes.index("Tinca tinca")


def test_a_class_folder_with_an_ambiguous_name_warns_and_is_unlabelled(tmp_path):
    from PIL import Image

    for folder in ("crane", "tench"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / folder / "a.png")
    with pytest.warns(DeepscopeWarning, match="folder 'crane'.*134 crane.*517 crane"):
        images = scan_images(tmp_path, imagenet_classes())
    assert images.labels == [None, 0]


def tiny_scripted(tmp_path, outputs: int):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, outputs)).eval()
    path = tmp_path / f"tiny{outputs}.pt"
    with pytest.warns(FutureWarning):
        torch.jit.script(model).save(str(path))
    return path


def test_a_torchscript_model_is_labelled_by_its_output_size(tmp_path):
    five = load_model(str(tiny_scripted(tmp_path, 5)))
    assert five.classes.names == ("class 0", "class 1", "class 2", "class 3", "class 4")
    assert load_model(str(tiny_scripted(tmp_path, 1000))).classes == imagenet_classes()


def test_a_path_that_exists_wins_over_arch_at_weights(tmp_path):
    folder = tmp_path / "runs@2"
    folder.mkdir()
    model = load_model(str(tiny_scripted(folder, 5)))  # ".../runs@2/tiny5.pt" is a file, not ARCH@WEIGHTS
    assert len(model.classes) == 5


def test_model_files_refuse_random_weights(tmp_path):
    path = tiny_scripted(tmp_path, 5)
    for spec in (str(path), f"resnet18@{path}", str(tmp_path / "model.tflite")):
        with pytest.raises(ModelSpecError, match="carries its own weights"):
            load_model(spec, pretrained=False)


def test_refusing_a_pickle_does_not_relay_the_unsafe_advice(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=3), tmp_path / "whole.pth")
    with pytest.raises(ModelSpecError) as error:
        load_model(f"resnet18@{tmp_path / 'whole.pth'}")
    message = str(error.value)
    assert "not a weights-only state_dict" in message and "torchvision.models.resnet.ResNet" in message
    assert "weights_only" not in message and "\n" not in message and "state_dict()" in message


def test_a_mismatched_architecture_is_summarised(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelSpecError) as error:
        load_model(f"mobilenet_v3_small@{tmp_path / 'r18.pth'}")
    message = str(error.value)
    assert len(message) < 600 and "\n" not in message
    assert "missing" in message and "unexpected" in message and "more" in message
