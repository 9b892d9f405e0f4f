"""Bench-only baseline: the BentoML service one would write by hand around the PyTorch FP32 teacher.

transformers + torch in the worker, BentoML's own adaptive batching with its defaults, same request and response
shape as serve/service.py ({"texts": [...]} -> [{"label", "score"}, ...]), so one load generator drives both.

    BENCH_TEACHER=runs/teacher bentoml serve bench.naive_service:Naive
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml


@bentoml.service(name="naive-pytorch", logging={"access": {"enabled": False}})
class Naive:
    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = os.environ["BENCH_TEACHER"]
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.max_length = json.loads((Path(path) / "manifest.json").read_text())["max_length"]

    @bentoml.api(batchable=True)
    def classify(self, texts: list[str]) -> list[dict]:
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with self.torch.inference_mode():
            probs = self.model(**batch).logits.softmax(-1)
        scores, best = probs.max(-1)
        return [{"label": self.labels[k], "score": float(s)} for k, s in zip(best.tolist(), scores.tolist())]
