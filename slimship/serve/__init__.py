"""Serving: ONNX Runtime + tokenizers + BentoML only. Never import torch or transformers here."""
