"""examples/classify_images.py end to end: real EfficientNet-Lite0 labels on real photos."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from mmbeam.testing import FaultServer

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "classify_images.py"
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup", "coffee mug"}


def _example():
    spec = importlib.util.spec_from_file_location("classify_images_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_example_classifies_the_photos(tmp_path, capsys):
    example = _example()
    with FaultServer() as server:
        urls = example.serve_pets(server)
        frame = example.classify(example.write_owners(str(tmp_path)), urls)
        frame = frame.select("dog_name", "image", "classify_breed").collect()  # runs once
        frame.show()
        text = capsys.readouterr().out
        out = frame.to_pydict()
    assert "┆ FixedSizeList[Utf8; 2]" in text and text.count("<Image>") == 5
    labels = dict(zip(out["dog_name"], out["classify_breed"], strict=True))
    assert set(labels) == set(example.PETS)
    assert all(re.fullmatch(r"\d{1,3}\.\d%", pct) for _, pct in labels.values())
    assert labels["Ernie"][0] in CAT_CLASSES  # chelsea, a tabby cat
    assert labels["Jackie"][0] in COFFEE_CLASSES  # coffee, a cup of espresso
    assert labels["Shaggie"][0] in {"missile", "projectile", "space shuttle"}  # rocket
    assert float(labels["Jackie"][1][:-1]) > 50
