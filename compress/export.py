"""Export a PyTorch artifact to an ONNX artifact (first cut: plain optimum-onnx export, no parity gate yet).

The ONNX artifact: model.onnx (inputs input_ids / attention_mask / token_type_ids, output logits, dynamic
batch and sequence axes), tokenizer.json (+ the tokenizer's config files), config.json, manifest.json.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from slimship import manifest as artifact

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def export(model_dir: str | Path, out: str | Path, opset: int | None = None) -> Path:
    from optimum.exporters.onnx import main_export

    source = artifact.load(model_dir, format="pytorch")
    with artifact.create(out, "export", format="onnx", parent=model_dir, config={"opset": opset}) as art:
        with tempfile.TemporaryDirectory() as tmp:
            main_export(str(model_dir), output=tmp, task="text-classification", opset=opset,
                        do_validation=False, no_post_process=True)
            shutil.copy(Path(tmp) / "model.onnx", art.dir / "model.onnx")
        for name in TOKENIZER_FILES:
            if (Path(model_dir) / name).is_file():
                shutil.copy(Path(model_dir) / name, art.dir / name)
        art.manifest.update(labels=source["labels"], max_length=source["max_length"],
                            metrics=source.get("metrics", {}))
    return Path(out)
