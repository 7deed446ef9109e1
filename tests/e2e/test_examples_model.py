"""The examples' numpy all-MiniLM-L6-v2 (examples/minilm.py) gives the model's published
similarities: the figures printed by sentence-transformers' documentation for this model (its
quick start and its semantic-search example), computed there with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from examples import minilm

PUBLISHED = [
    ("The weather is lovely today.", "It's so sunny outside!", 0.6660),
    ("The weather is lovely today.", "He drove to the stadium.", 0.1046),
    ("It's so sunny outside!", "He drove to the stadium.", 0.1411),
    ("A man is eating food.", "A man is eating a piece of bread.", 0.7553),
    ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground.", 0.7369),
    (
        "A monkey is playing drums.",
        "Someone in a gorilla costume is playing a set of drums.",
        0.6433,
    ),
]


@pytest.fixture(scope="module")
def model() -> minilm.Embedder:
    return minilm.load()


def test_published_similarities(model: minilm.Embedder) -> None:
    for first, second, published in PUBLISHED:
        a, b = model.embed([first, second])
        assert float(a @ b) == pytest.approx(published, abs=6e-4), (first, second)


def test_vectors_are_unit_length_and_independent_of_the_batch(model: minilm.Embedder) -> None:
    texts = [p[0] for p in PUBLISHED] + ["a much longer text " * 40]
    together = model.embed(texts)
    assert together.shape == (len(texts), minilm.DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    alone = np.stack([model.embed([t])[0] for t in texts])  # no padding at all
    np.testing.assert_allclose(together, alone, atol=1e-5)
