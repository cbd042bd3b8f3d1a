"""The report: structure of a small page, escaping, atomic writing, caching, the CLI."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from markupsafe import escape
from PIL import Image

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution.base import Attribution
from deepscope.cache import CacheWarning, model_digest
from deepscope.catalogue import METHODS, MethodEntry
from deepscope.cli import main
from deepscope.errors import DeepscopeError, UnsupportedModelError
from deepscope.fileio import OutputExistsError
from deepscope.images import evenly_spaced, scan_images
from deepscope.models.classes import ClassList
from deepscope.models.preprocess import Preprocess
from deepscope.models.zoo import LoadedModel
from deepscope.report import Cache, ReportContext, ReportSettings, parse_sections, write_report
from deepscope.report.base import COST_SHARES, SaliencyCard, cost_share
from deepscope.report.sections import SECTIONS
from deepscope.report.sections.saliency import gallery_methods

CLASSES = ("tench", "goldfish", "shark", "hen", "ostrich")


def _photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    array = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _loaded(model, classes=CLASSES, name="tiny") -> LoadedModel:
    return LoadedModel(model, Preprocess(32, 36), ClassList(tuple(classes)), name, "a test model")


def _context(loaded, root, cache=None, **settings) -> ReportContext:
    images = scan_images(root, loaded.classes)
    options = {"per_class": 2, "steps": 2, "progress": False, **settings}
    return ReportContext(loaded, images, ReportSettings(**options), cache or Cache(None))


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """Two class folders (tench, hen) of three small photos each."""
    root = tmp_path / "photos"
    for c, folder in enumerate(("tench", "hen")):
        for i in range(3):
            _photo(root / folder / f"{folder}_{i}.png", seed=10 * c + i)
    return root


def _data_uris(page: str) -> list[str]:
    return re.findall(r"data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]+", page)


def test_small_report_structure(tmp_path, tiny_cnn, photo_folder, monkeypatch):
    import deepscope.classify
    import deepscope.features
    import deepscope.images
    import deepscope.neurons

    decoded, passes = [], []
    real_load = deepscope.images.load_image
    monkeypatch.setattr(deepscope.images, "load_image", lambda path: decoded.append(Path(path)) or real_load(path))
    for module in (deepscope.classify, deepscope.features, deepscope.neurons):
        real_iter = module.iter_batches
        monkeypatch.setattr(module, "iter_batches", lambda *a, real=real_iter, **k: passes.append(1) or real(*a, **k))
    loaded = _loaded(tiny_cnn)
    before = model_fingerprint(tiny_cnn)
    path = write_report(_context(loaded, photo_folder), tmp_path / "out")
    assert_unchanged(tiny_cnn, before)
    # a photo is decoded by each pass over the folder, and once more at most for all the pictures of the page
    # (GradientSHAP also decodes its reference photos, the built-in ones, outside the folder)
    decoded = [p for p in decoded if photo_folder in p.parents]
    assert len(set(decoded)) == 6 and max(decoded.count(p) for p in decoded) <= len(passes) + 1
    assert path == tmp_path / "out" / "report.html"
    assert path.stat().st_mode & 0o644 == 0o644  # readable by others, like any file the user writes
    page = path.read_text(encoding="utf-8")

    for name in SECTIONS:
        assert f'id="section-{name}"' in page
    # labelled folders: accuracy is measured, per class
    assert "accuracy" in page and "top-1" in page and "Accuracy per class" in page
    # per_class=2 over two folders: four cards, each with one tile and one switch button per method
    cards = re.findall(r'<article class="card" id="([^"]+)">', page)
    assert len(cards) == 4 and len(set(cards)) == 4
    methods = gallery_methods()
    assert "gradient" in methods and "random" not in methods  # controls belong to the trust table
    for method in methods:
        assert page.count(f'<button type="button" data-method="{method}"') == 4
        assert page.count(f'data-method="{method}">') >= 4  # the tiles
    # every picture is embedded and decodes; nothing is fetched from elsewhere
    uris = _data_uris(page)
    assert len(uris) >= 4 * (1 + len(methods))
    for uri in set(uris):
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).load()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    assert "url(http" not in page and "@import" not in page
    # footer: versions, settings, time per step
    for text in ("torchvision", "python", "seed", "per_class", "classify images", "saliency", "total"):
        assert text in page


def test_samples_per_class_are_seeded(tiny_cnn, photo_folder):
    ctx = _context(_loaded(tiny_cnn), photo_folder, per_class=1, seed=3)
    chosen = ctx.samples()
    assert [ctx.images.folders[i] for i in chosen] == ["hen", "tench"]  # folder order
    assert _context(_loaded(tiny_cnn), photo_folder, per_class=1, seed=3).samples() == chosen
    assert len(_context(_loaded(tiny_cnn), photo_folder, per_class=3, max_images=4).samples()) == 4


class _Refusing(Attribution):
    name = "refusing"

    def __init__(self, model):
        super().__init__(model)
        raise UnsupportedModelError('needs a <script>alert("m")</script> head & "quotes"')


def test_everything_written_is_escaped(tmp_path, tiny_cnn, monkeypatch):
    evil = '<script>alert(1)</script>'
    root = tmp_path / "in"
    folder = '<script>alert(2)& "x" \'y\''
    _photo(root / folder / 'a&b "c" <script>alert(3).png', seed=1)
    _photo(root / "plain" / "<script>alert(4)&.png", seed=2)
    classes = (f"fish {evil}", 'goldfish "&"', "shark", "hen", "ostrich")
    torch.nn.init.constant_(tiny_cnn[-1].bias, 0.0)
    tiny_cnn[-1].bias.data[0] = 100.0  # every image is predicted as class 0, the evil name
    monkeypatch.setitem(METHODS, "refusing", MethodEntry("refusing", _Refusing, f"paper {evil}", f"summary {evil} & co"))
    loaded = _loaded(tiny_cnn, classes, name=f"model {evil} & \"friends\"")
    page = write_report(_context(loaded, root), tmp_path / "out", "model,saliency").read_text(encoding="utf-8")

    assert "<script>alert" not in page
    assert page.count("<script>") == 1  # the page's own script
    for raw in ("a&b \"c\" <script>alert(3).png", "<script>alert(4)&.png", folder, f"fish {evil}",
                f"model {evil} & \"friends\"", 'needs a <script>alert("m")</script> head & "quotes"'):
        assert str(escape(raw)) in page, raw
    assert "not applicable: needs a &lt;script&gt;" in page


def test_display_maps_reduce_and_keep_sign():
    from deepscope.maps import Display, display_maps

    per_channel = torch.zeros(1, 3, 2, 2)
    per_channel[0, 1, 0, 0] = -4.0
    per_channel[0, 2, 1, 1] = 2.0
    maps = display_maps(per_channel, Display("abs-max", signed=False), (2, 2))  # |.| over channels: magnitudes
    assert maps.shape == (1, 2, 2) and maps[0, 0, 0] == 1.0 and maps.min() >= 0
    assert display_maps(per_channel, Display("sum", signed=True), (2, 2))[0, 0, 0] == -1.0
    spatial = torch.tensor([[[[1.0, -1.0], [0.0, 0.5]]]])
    maps = display_maps(spatial, Display(signed=True), (2, 2))
    assert maps.min() < 0 and maps.max() <= 1
    assert display_maps(spatial, Display(signed=False), (2, 2)).min() == 0  # unsigned: negative values clipped
    assert display_maps(spatial, Display(signed=True), (4, 4)).shape == (1, 4, 4)


def test_heatmap_layer_is_transparent_where_the_map_is_zero():
    from deepscope.render.report import heatmap_layer_uri

    heatmap = torch.tensor([[0.0, 1.0], [0.5, 0.0]])
    image = Image.open(io.BytesIO(base64.b64decode(heatmap_layer_uri(heatmap).split(",", 1)[1]))).convert("RGBA")
    alpha = np.asarray(image)[..., 3]
    assert alpha[0, 0] == 0 and alpha[1, 1] == 0 and alpha[0, 1] == 255 and 0 < alpha[1, 0] < 255


def test_no_overwrite_and_interrupt_leave_the_old_page(tmp_path, tiny_cnn, photo_folder, monkeypatch):
    loaded = _loaded(tiny_cnn)
    out = tmp_path / "out"
    path = write_report(_context(loaded, photo_folder, per_class=1), out, "model")
    first = path.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        write_report(_context(loaded, photo_folder), out, "model")

    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(SECTIONS, "saliency", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(_context(loaded, photo_folder), out, "model,saliency", overwrite=True)
    assert path.read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]  # no temporary file left

    def render_interrupted(**context):
        raise KeyboardInterrupt

    monkeypatch.setattr("deepscope.render.report.render_page", render_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(_context(loaded, photo_folder), tmp_path / "fresh", "model")
    assert not (tmp_path / "fresh" / "report.html").exists()


def test_a_rerun_reads_maps_from_the_cache(tmp_path, tiny_cnn, photo_folder):
    loaded = _loaded(tiny_cnn)
    digest = model_digest(loaded)
    cache = Cache(tmp_path / "cache")
    first = write_report(_context(loaded, photo_folder, cache), tmp_path / "a", "saliency").read_text(encoding="utf-8")
    assert cache.misses > 0 and cache.hits == 0
    again = Cache(tmp_path / "cache")
    second = write_report(_context(loaded, photo_folder, again), tmp_path / "b", "saliency").read_text(encoding="utf-8")
    shown = sum(len(evenly_spaced(4, cost_share(name).gallery)) for name in gallery_methods())
    assert shown < len(gallery_methods()) * 4  # RISE's share is 2 of the 4 photos
    assert again.misses == 0 and again.hits == 1 + shown  # predictions + every map computed
    assert _data_uris(first) == _data_uris(second)
    # another image content or other weights: new keys
    _photo(photo_folder / "hen" / "hen_0.png", seed=99)
    changed = Cache(tmp_path / "cache")
    write_report(_context(loaded, photo_folder, changed), tmp_path / "c", "saliency")
    assert changed.misses > 0
    weight = tiny_cnn[-1].weight.detach().clone()
    with torch.no_grad():
        tiny_cnn[-1].weight.add_(1.0)
    assert model_digest(loaded) != digest
    tiny_cnn[-1].weight.data.copy_(weight)  # invisible to the tensor's version counter, seen all the same
    assert model_digest(loaded) == digest


def test_costly_methods_get_their_share_of_the_photos(tmp_path, tiny_cnn, photo_folder):
    from deepscope.catalogue import COSTS

    assert set(COST_SHARES) == set(COSTS)  # every cost class has a share
    section = SECTIONS["saliency"](_context(_loaded(tiny_cnn), photo_folder))
    cards = [item for item in section.items if isinstance(item, SaliencyCard)]
    computed = {layer.method: [] for layer in cards[0].layers}
    for card in cards:
        for layer in card.layers:
            computed[layer.method].append(layer.src is not None)
            assert (layer.src is None) == layer.note.startswith("not computed for this photo")
    assert computed.pop("rise") == [True, False, True, False]  # its share: 2 of the 4 samples, spread
    assert all(all(flags) for flags in computed.values())
    legend = section.items[0].rows
    assert [row[-1] for row in legend if row[0] == "rise"] == ["2 of 4"] and legend[0][-1] == "all"


def test_evenly_spaced():
    assert evenly_spaced(40, 8) == [0, 5, 10, 15, 20, 25, 30, 35]
    assert evenly_spaced(4, 2) == [0, 2]
    assert evenly_spaced(3, None) == evenly_spaced(3, 7) == [0, 1, 2]
    assert evenly_spaced(5, 0) == []


def test_damaged_cache_entry_is_recomputed(tmp_path):
    cache = Cache(tmp_path)
    cache.save("maps", "ab" * 32, {"map": torch.ones(2)})
    entry = next((tmp_path / "maps").rglob("*.pt"))
    entry.write_bytes(b"not a torch file")
    with pytest.warns(CacheWarning, match="damaged cache entry"):
        assert cache.load("maps", "ab" * 32) is None and not entry.exists()
    assert entry.with_name(entry.name + ".damaged").read_bytes() == b"not a torch file"  # moved aside, not deleted


def test_parse_sections():
    assert parse_sections(None) == list(SECTIONS)
    assert parse_sections("saliency,model") == ["model", "saliency"]  # page order
    with pytest.raises(DeepscopeError, match="unknown section 'salency'.*saliency"):
        parse_sections("salency")
    with pytest.raises(DeepscopeError, match="empty"):
        parse_sections(" , ")


def test_cli_refuses_to_overwrite_and_names_bad_sections(tmp_path, capsys):
    (tmp_path / "report.html").write_text("old")
    assert main(["report", "--out", str(tmp_path), "--quiet"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "new"), "--sections", "model,nope"]) == 2
    assert "unknown section 'nope'" in capsys.readouterr().err
    assert (tmp_path / "report.html").read_text() == "old"


def test_cli_writes_a_report(tmp_path, photo_folder, capsys):
    out = tmp_path / "out"
    code = main(["report", "--model", "mobilenet_v2", "--random-weights", "--images", str(photo_folder),
                 "--sections", "model", "--out", str(out), "--quiet", "--no-cache"])
    assert code == 0
    assert f"wrote {out / 'report.html'}" in capsys.readouterr().out
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="section-model"' in page and 'id="section-saliency"' not in page
    assert "mobilenet_v2" in page and "3,504,872" in page  # MobileNet-V2's parameter count


def test_figures_are_cached_as_png(tmp_path, tiny_cnn, photo_folder):
    from deepscope.render.common import subplots

    drawn = []

    def draw():
        drawn.append(1)
        fig, ax = subplots(figsize=(1, 1))
        ax.plot([0, 1])
        return fig

    ctx = _context(_loaded(tiny_cnn), photo_folder, Cache(tmp_path))
    first = ctx.figure("line", [1], draw)
    assert first.startswith("data:image/png;base64,") and ctx.figure("line", [1], draw) == first
    assert len(drawn) == 1
    ctx.figure("line", [2], draw)  # other settings: drawn again
    assert len(drawn) == 2
