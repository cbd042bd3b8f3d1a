"""Maps in notebooks: the example notebook runs (nbclient) and shows its maps; Explanation and show() on a tiny CNN."""

from __future__ import annotations

import html

import pytest
import torch

from conftest import REPO, assert_unchanged, model_fingerprint
from serve_helpers import EVIL_NAME, photo_folder, tiny_loaded

from deepscope.catalogue import build_method
from deepscope.errors import DeepscopeError
from deepscope.images import load_image

NOTEBOOK = REPO / "examples" / "explain_in_a_notebook.ipynb"


def test_the_example_notebook_runs_and_its_maps_display_themselves(tmp_path):
    import nbclient
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]
    for cell_outputs in outputs:
        assert not [o for o in cell_outputs if o.output_type == "error"]
    explanation, other_class, grid, shapes = outputs[1], outputs[2], outputs[3], outputs[4]
    data = explanation[-1]["data"]
    assert {"text/html", "image/png"} <= set(data)  # HTML in Jupyter, PNG elsewhere
    assert data["text/html"].count("data:image/png;base64,") >= 3 + 2  # three maps and two colour scales
    assert "Explanation(1 photo(s) x 3 method(s): gradcam, gradient, ig)" in data["text/plain"]
    assert "Egyptian cat" in other_class[-1]["data"]["text/html"]
    assert "image/png" in grid[-1]["data"]  # the figure of show(), without pyplot
    assert "(1, 1, 224, 224)" in shapes[-1]["data"]["text/plain"]


@pytest.fixture
def tiny(tmp_path):
    return tiny_loaded(), sorted(photo_folder(tmp_path / "photos", count=3).iterdir())


def test_an_explanation_holds_the_catalogues_maps(tiny):
    from deepscope.notebook import explain

    loaded, photos = tiny
    before = model_fingerprint(loaded.model)
    result = explain(loaded, photos[:2], ["gradcam", "gradient"], target=[3, "hen"], layer="2")
    assert result.targets == [3, 8] and result.target_names == ["tiger shark", "hen"]
    assert result.titles == [photos[0].name, photos[1].name]
    pixels = torch.stack([loaded.preprocess.crop(load_image(p)) for p in photos[:2]])
    assert torch.equal(result.pixels, pixels)
    for name, options in (("gradcam", {"layer": "2"}), ("gradient", {})):
        method = build_method(name, loaded.model, **options)
        expected = method.attribute(loaded.preprocess.normalize(pixels), target=torch.tensor([3, 8]))
        assert torch.allclose(result.maps[name], expected, atol=1e-6)
        assert result.displays[name] == method.display
    assert_unchanged(loaded.model, before)
    predicted = explain(loaded, photos[2], "gradient")
    with torch.no_grad():
        assert predicted.targets == [int(loaded.model(loaded.preprocess.normalize(
            loaded.preprocess.crop(load_image(photos[2])))[None]).argmax())]


def test_an_explanation_displays_itself_with_every_name_escaped(tiny):
    from deepscope.notebook import explain

    loaded, photos = tiny
    result = explain(loaded, photos[0], ["gradcam", "cam", "random"], target=9, layer="2")
    assert set(result.maps) == {"gradcam", "random"} and result.notes["cam"].startswith("not applicable")
    page = result._repr_html_()
    assert EVIL_NAME not in page and html.escape(EVIL_NAME) in page
    assert "<img src=x" not in page and page.count("data:image/png;base64,") == 2 + 2
    png = result._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert repr(result) == "Explanation(1 photo(s) x 2 method(s): gradcam, random; not applicable: cam)"


def test_show_draws_images_by_methods_without_pyplot(tiny):
    import matplotlib

    from deepscope.notebook import show

    loaded, photos = tiny
    backend = matplotlib.get_backend()
    figure = show(loaded, photos, ["gradient", "guided"], options={"guided": {"absolute": True}})
    assert len(figure.axes) == 3 * 3 + 3 * 2  # photos x (photo + 2 maps), and a colour bar per map
    assert figure._repr_png_().startswith(b"\x89PNG")
    assert matplotlib.get_backend() == backend
    import sys

    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


def test_bad_notebook_input_is_refused_before_any_work(tiny):
    from deepscope.notebook import explain

    loaded, photos = tiny
    with pytest.raises(DeepscopeError, match="unknown method 'gradkam'"):
        explain(loaded, photos[0], "gradkam")
    with pytest.raises(DeepscopeError, match="unknown option 'stepz'"):
        explain(loaded, photos[0], "ig", options={"ig": {"stepz": 3}})
    with pytest.raises(DeepscopeError, match="unknown class 'unicorn'"):
        explain(loaded, photos[0], "gradient", target="unicorn")
    with pytest.raises(DeepscopeError, match="got 2 classes for 1 image"):
        explain(loaded, photos[0], "gradient", target=[1, 2])
    with pytest.raises(DeepscopeError, match="file paths or PIL images"):
        explain(loaded, 42, "gradient")
