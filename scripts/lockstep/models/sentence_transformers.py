"""The `sentence-transformers` family: a BERT-style sentence encoder, run without torch.

The artifact is the directory sentence-transformers saves (`config.json`, `tokenizer.json`,
`model.safetensors`, `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`). At
load time the encoder's forward pass is written as an ONNX graph (onnx.helper, weights read from
the safetensors with numpy) and run by onnxruntime; `tokenizers` does the WordPiece step; pooling
(mean or CLS) and the optional Normalize module follow the directory's own configuration.

Why ONNX and not a numpy forward pass: measured 44.6 vs 17-21 docs/s on 2 threads (256-token
docstrings, batch 32), with the same output (cosine >= 0.9999995 against sentence-transformers).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lockstep import models
from lockstep.errors import IntegrityError

FAMILY = "sentence-transformers"
REQUIRED = ("config.json", "tokenizer.json", "model.safetensors")
BATCH = 32  # measured: batch 32 beats 64 on 2 cores
DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    data = path.read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = (8 + length + offset for offset in info["data_offsets"])
            dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
            array = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start)
            tensors[name.removeprefix("bert.")] = array.reshape(info["shape"])
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path} is not a readable safetensors file ({exc}); rebuild the artifact") from None
    return tensors


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path} is missing or not JSON ({exc}); rebuild the artifact") from None


class Encoder:
    """A loaded sentence encoder: tokenizer, onnxruntime session, pooling, optional normalisation."""

    family = FAMILY

    def __init__(self, directory: Path, version: str, artifact_sha256: str):
        import onnxruntime
        from tokenizers import Tokenizer

        self.version, self.artifact_sha256 = version, artifact_sha256
        config = _json(directory / "config.json")
        pooling = _pooling_config(directory)
        self.dimension = int(config["hidden_size"])
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        self.normalized = _normalizes(directory)
        max_length = int(_sbert_config(directory).get("max_seq_length", config.get("max_position_embeddings", 512)))
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.no_padding()
        graph = bert_graph(config, read_safetensors(directory / "model.safetensors"))
        options = onnxruntime.SessionOptions()
        threads = int(os.environ.get("LOCKSTEP_ENCODE_THREADS", min(2, os.cpu_count() or 1)))
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def input_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts after truncation: what a batch is padded to (models.encode_order)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        # Batches of similar length waste little on padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            out[rows] = self._batch([encodings[i] for i in rows])
        if self.normalized:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, np.maximum(norms, 1e-12), out=out)
        return out

    def _batch(self, encodings: list) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)], types[row, : len(e.ids)], mask[row, : len(e.ids)] = e.ids, e.type_ids, 1
        bias = ((1.0 - mask[:, None, None, :]) * -1e9).astype(np.float32)
        positions = np.arange(width, dtype=np.int64)[None, :]
        (hidden,) = self.session.run(
            None, {"input_ids": ids, "token_type_ids": types, "position_ids": positions, "mask_bias": bias}
        )
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask[:, :, None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def _pooling_config(directory: Path) -> dict:
    path = directory / "1_Pooling" / "config.json"
    return _json(path) if path.exists() else {"pooling_mode_mean_tokens": True}


def _sbert_config(directory: Path) -> dict:
    path = directory / "sentence_bert_config.json"
    return _json(path) if path.exists() else {}


def _normalizes(directory: Path) -> bool:
    path = directory / "modules.json"
    modules = _json(path) if path.exists() else []
    return any(str(m.get("type", "")).endswith(".Normalize") for m in modules)


def bert_graph(config: dict, weights: dict[str, np.ndarray]) -> bytes:
    """A BERT encoder's forward pass as a serialized ONNX model (opset 17): last hidden state."""
    from onnx import TensorProto, helper, numpy_helper

    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    nodes, inits = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x: str, prefix: str, out: str) -> str:
        w = const(prefix + ".weight", weights[prefix + ".weight"].astype(np.float32).T)
        b = const(prefix + ".bias", weights[prefix + ".bias"].astype(np.float32))
        return node("Add", [node("MatMul", [x, w], out + "_mm"), b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        scale = const(prefix + ".weight", weights[prefix + ".weight"].astype(np.float32))
        bias = const(prefix + ".bias", weights[prefix + ".bias"].astype(np.float32))
        return node("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=eps)

    split = const("split_heads", np.array([0, 0, heads, hidden // heads], dtype=np.int64))
    merge = const("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("attention_scale", np.array(1.0 / np.sqrt(hidden // heads), dtype=np.float32))
    half, one, root2 = (
        const(n, np.array(v, dtype=np.float32)) for n, v in [("half", 0.5), ("one", 1.0), ("root2", np.sqrt(2.0))]
    )

    embedded = [
        node(
            "Gather",
            [
                const(
                    f"embeddings.{kind}_embeddings.weight",
                    weights[f"embeddings.{kind}_embeddings.weight"].astype(np.float32),
                ),
                source,
            ],
            f"{kind}_emb",
        )
        for kind, source in [("word", "input_ids"), ("position", "position_ids"), ("token_type", "token_type_ids")]
    ]
    x = layer_norm(
        node("Add", [node("Add", embedded[:2], "emb_wp"), embedded[2]], "emb_sum"), "embeddings.LayerNorm", "h0"
    )
    for i in range(int(config["num_hidden_layers"])):
        p, t = f"encoder.layer.{i}", f"l{i}_"
        q, k, v = (
            node("Reshape", [linear(x, f"{p}.attention.self.{name}", t + name), split], t + name + "_heads")
            for name in ("query", "key", "value")
        )
        q = node("Transpose", [q], t + "q_t", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], t + "k_t", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], t + "v_t", perm=[0, 2, 1, 3])
        scores = node(
            "Add", [node("Mul", [node("MatMul", [q, k], t + "qk"), scale], t + "qk_s"), "mask_bias"], t + "scores"
        )
        context = node("MatMul", [node("Softmax", [scores], t + "probs", axis=-1), v], t + "ctx")
        context = node("Reshape", [node("Transpose", [context], t + "ctx_t", perm=[0, 2, 1, 3]), merge], t + "ctx_m")
        attended = linear(context, f"{p}.attention.output.dense", t + "attn_out")
        x = layer_norm(node("Add", [attended, x], t + "attn_res"), f"{p}.attention.output.LayerNorm", t + "h_attn")
        inner = linear(x, f"{p}.intermediate.dense", t + "inner")
        erf = node("Erf", [node("Div", [inner, root2], t + "inner_s")], t + "erf")
        gelu = node(
            "Mul", [node("Mul", [inner, half], t + "inner_h"), node("Add", [erf, one], t + "erf_1")], t + "gelu"
        )
        outer = linear(gelu, f"{p}.output.dense", t + "ffn_out")
        x = layer_norm(node("Add", [outer, x], t + "ffn_res"), f"{p}.output.LayerNorm", t + "h")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    ints = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "token_type_ids")
    ]
    inputs = [
        *ints,
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "seq"]),
        helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["batch", 1, 1, "seq"]),
    ]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])
    graph = helper.make_graph(nodes, "bert", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lockstep")
    model.ir_version = 8
    return model.SerializeToString()


class SentenceTransformers(models.Family):
    name = FAMILY

    def recognizes(self, directory: Path) -> bool:
        return all((directory / name).is_file() for name in REQUIRED)

    def verify(self, directory: Path) -> None:
        """Files present, a BERT config, and every tensor the forward pass needs with its shape."""
        missing = [name for name in REQUIRED if not (directory / name).is_file()]
        if missing:
            raise IntegrityError(
                f"{directory}: missing {', '.join(missing)}; a sentence-transformers model needs {', '.join(REQUIRED)}"
            )
        config = _json(directory / "config.json")
        if config.get("model_type") != "bert":
            raise IntegrityError(
                f"{directory}/config.json: model_type {config.get('model_type')!r} is not supported (bert)"
            )
        try:
            hidden, inner, layers = (int(config[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
            if hidden % int(config["num_attention_heads"]):
                raise ValueError("hidden_size is not a multiple of num_attention_heads")
        except (KeyError, ValueError, TypeError) as exc:
            raise IntegrityError(f"{directory}/config.json: not a usable BERT config ({exc})") from None
        tensors = read_safetensors(directory / "model.safetensors")
        expected = {"embeddings.word_embeddings.weight": (None, hidden), "embeddings.LayerNorm.weight": (hidden,)}
        for i in range(layers):
            p = f"encoder.layer.{i}"
            expected |= {f"{p}.attention.self.{n}.weight": (hidden, hidden) for n in ("query", "key", "value")}
            expected |= {f"{p}.intermediate.dense.weight": (inner, hidden), f"{p}.output.dense.weight": (hidden, inner)}
        for name, shape in expected.items():
            actual = tensors.get(name)
            if actual is None or any(want not in (None, got) for want, got in zip(shape, actual.shape, strict=False)):
                raise IntegrityError(
                    f"{directory}/model.safetensors: tensor {name} is {'missing' if actual is None else actual.shape}, expected {shape}"
                )
        pooling = _pooling_config(directory)
        if not (pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode_cls_token")):
            raise IntegrityError(f"{directory}/1_Pooling/config.json: only mean or CLS pooling is supported")

    def load(self, directory: Path, version: str | None, artifact_sha256: str) -> Encoder:
        return Encoder(directory, version or "unversioned", artifact_sha256)
