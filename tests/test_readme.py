"""The README's Python example runs as written, on a model dir and a photo under the names it uses."""

import re

import numpy as np
from PIL import Image

from conftest import REPO


def test_readme_python_example_runs(random_model_dir, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert len(blocks) == 1, "the README has one Python example"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_dir").symlink_to(random_model_dir, target_is_directory=True)
    photo = np.random.default_rng(0).integers(0, 256, (1000, 1800, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the example is the project's own text
    assert namespace["masks"].shape == (3, 1000, 1800) and namespace["mask"].shape == (1, 1000, 1800)
    assert isinstance(namespace["records"], list)
