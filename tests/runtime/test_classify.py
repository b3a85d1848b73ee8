"""classify over any ImageModel: softmax top-k, batching, names."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rwkv_edge.errors import OptionError
from rwkv_edge.runtime.classify import BATCH, classify, top_k


class ChannelMeans:
    """An ImageModel whose logits are the mean of each normalised channel: the brightest channel wins."""

    image_size = 8
    class_names = ("red", "green", "blue")

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        return images.mean((2, 3))  # (N, 3)


def test_top_k_is_the_softmax_in_order():
    logits = np.array([[0.0, 2.0, 1.0, 2.0], [5.0, -1.0, 0.0, 0.0]], dtype=np.float32)
    got = top_k(logits, 3, None)
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert [g.index for g in got[0]] == [1, 3, 2]  # a tie goes to the lower index
    np.testing.assert_allclose([g.probability for g in got[0]], p[[1, 3, 2]], rtol=1e-6)
    assert [g.name for g in got[1]] == ["0", "2", "3"]
    assert len(top_k(logits, 10, list("abcd"))[0]) == 4 and top_k(logits, 1, list("abcd"))[1][0].name == "a"


def test_classify_batches_and_keeps_the_order(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    paths = []
    for i in range(BATCH + 5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (12, 10), colours[i % 3]).save(paths[-1])
    model = ChannelMeans()
    results = classify(model, paths, top=2)
    assert model.calls == [BATCH, 5]
    assert [r.top[0].name for r in results] == [("red", "green", "blue")[i % 3] for i in range(BATCH + 5)]
    assert [r.path for r in results] == paths and all(len(r.top) == 2 for r in results)
    with pytest.raises(OptionError, match="top must be at least 1"):
        classify(model, paths, top=0)
