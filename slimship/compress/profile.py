"""How big and how costly a model is: parameters, MACs for one row, and bytes on disk.

MACs come from torch-pruning's op counter: it counts the multiply-accumulates of the layers (Linear, LayerNorm,
...) in one forward pass. The attention score products are not layers, so they are left out -- the same way for
every model, which keeps the numbers comparable between teacher, student and pruned model.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from slimship.train import families
from slimship.train.artifacts import count_parameters


def example_inputs(model, max_length: int = 128, batch_size: int = 1) -> dict:
    """A full-length dummy batch for tracing and counting (token id 1 everywhere; only shapes matter)."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", 2))
    ids = torch.full((batch_size, max_length), min(1, vocab - 1), dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if families.family_of(model, "profile").takes_token_type_ids:  # the family adapter knows its inputs
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def count_macs(model, max_length: int = 128) -> int:
    """Multiply-accumulates of one forward pass over one row of ``max_length`` tokens."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the counter prints a warning per keyword-only module
            macs, _ = tp.utils.count_ops_and_params(model, example_inputs(model, max_length))
    finally:
        model.train(was_training)
    return int(macs)


def model_profile(model, max_length: int = 128) -> dict:
    """``{"parameters": int, "macs": int}`` of a PyTorch model (MACs for one row of ``max_length`` tokens)."""
    return {"parameters": count_parameters(model), "macs": count_macs(model, max_length)}


def file_size(path: str | Path) -> int:
    """Bytes of a file, or of every file under a directory (an artifact's manifest included)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weights_size(artifact_dir: str | Path) -> int:
    """Bytes of the model weights of an artifact (model.safetensors or model.onnx), else the whole directory."""
    root = Path(artifact_dir)
    for name in ("model.safetensors", "model.onnx"):
        if (root / name).is_file():
            # Weights over ONNX's 2 GB limit live beside the graph (model.onnx_data, model.onnx.data).
            return file_size(root / name) + sum(file_size(p) for p in root.glob(name + "*data"))
    return file_size(root)
