"""The one inference path: an ONNX artifact -> labels, scores and probabilities.

Used by the HTTP service, by batch scoring and by ``slimship evaluate`` on ONNX artifacts, so all three give
the same answers. It needs only onnxruntime, tokenizers and numpy (no torch, no transformers), which keeps the
serving image small and its start fast.

    clf = Classifier("runs/demo/model")
    clf.predict(["great film"])  ->  [{"label": "positive", "score": 0.98}]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from slimship import manifest as artifact
from slimship.manifest import ArtifactError

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


def default_threads() -> int:
    """Intra-op threads: SLIMSHIP_THREADS if set, else every core (ONNX Runtime's own default ignores cgroups)."""
    env = os.environ.get("SLIMSHIP_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Classifier:
    """A verified ONNX artifact ready to classify text."""

    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, verify: bool = True,
                 spinning: bool = True):
        """``threads``: ONNX Runtime intra-op threads (default: SLIMSHIP_THREADS, else every core).
        ``spinning=False`` lets idle ORT threads sleep instead of busy-waiting: a server sharing its cores with
        an event loop wants that; a batch job that keeps ORT busy does not."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(artifact_dir)
        self.manifest = artifact.load(self.path, verify=verify, format="onnx")
        for name in (MODEL_FILE, TOKENIZER_FILE):
            if name not in self.manifest.get("files", {}):
                raise ArtifactError(f"{self.path}: incomplete ONNX artifact, the manifest lists no {name}")
        self.labels: list[str] = list(self.manifest["labels"])
        self.max_length: int = int(self.manifest["max_length"])

        self.tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

        options = ort.SessionOptions()
        self.threads = threads or default_threads()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path / MODEL_FILE), options,
                                            providers=self.providers(ort))
        self.input_names = [i.name for i in self.session.get_inputs()]

    @staticmethod
    def providers(ort) -> list[str]:
        """CUDA first where onnxruntime-gpu and a GPU are present, CPU always as the fallback."""
        available = ort.get_available_providers()
        wanted = [p for p in ("CUDAExecutionProvider",) if p in available and os.environ.get("SLIMSHIP_DEVICE") != "cpu"]
        return wanted + ["CPUExecutionProvider"]

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: feeds[name] for name in self.input_names}

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.session.run(["logits"], self.encode(texts))[0]

    def predict(self, texts: Sequence[str], probs: bool = False) -> list[dict[str, Any]]:
        """One ``{"label", "score"}`` (and ``"probs"`` by label when asked) per text, in input order."""
        return self.results(self.logits(texts), probs)

    def results(self, logits: np.ndarray, probs: bool = False) -> list[dict[str, Any]]:
        p = softmax(logits.astype(np.float32))
        best = p.argmax(axis=-1)
        out = []
        for row, k in zip(p, best):
            item: dict[str, Any] = {"label": self.labels[k], "score": float(row[k])}
            if probs:
                item["probs"] = {label: float(v) for label, v in zip(self.labels, row)}
            out.append(item)
        return out
