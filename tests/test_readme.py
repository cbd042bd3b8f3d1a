"""The README's library example runs as written (on a built-in photo)."""

import re

from conftest import REPO
from deepscope.sample_images import builtin_photo_paths


def test_readme_python_example_runs():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python example"
    photo = next(p for p in builtin_photo_paths() if p.name == "coffee.png")
    namespace: dict = {}
    exec(blocks[0].replace('"photo.jpg"', repr(str(photo))), namespace)
    assert namespace["cam"].shape == (1, 1, 224, 224)
    assert float(namespace["cam"].min()) >= 0 and float(namespace["cam"].max()) <= 1
    assert namespace["ig"].shape == (1, 3, 224, 224)
    assert namespace["smooth"].shape == (1, 1, 224, 224)
