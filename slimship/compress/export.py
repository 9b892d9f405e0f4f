"""Export a PyTorch artifact to a verified ONNX artifact.

    export("runs/student", "runs/student-onnx", DataConfig("data/"), ExportConfig()) -> Path("runs/student-onnx")

The graph comes from optimum-onnx's TorchScript exporter (dynamic batch and sequence axes; torch 2.13's default
dynamo exporter writes external data and defeats ONNX Runtime's fusions). ``optimize`` O1/O2/O3 runs ONNX
Runtime's transformer optimizer over it (O2/O3 fuse attention, layer norm and GELU). Fusion is a choice, not a
default: on a 2-core x86 CPU the fused MiniLM graph was not faster, so the budgeted search measures both.

The parity gate runs the PyTorch model and the finished ONNX artifact -- through ``serve.runtime.Classifier``,
the same path the service uses, tokenizer included -- on validation rows, records the largest |logit
difference| and the share of rows whose predicted label agrees, and refuses the export (nothing written)
below ``min_agreement``. Rows come from ``data`` when given, else from the data the model was trained on (as
its manifest records), else from a short built-in list of probe sentences.

The ONNX artifact: model.onnx (inputs input_ids / attention_mask [/ token_type_ids], output logits),
tokenizer.json (+ tokenizer config files), config.json, manifest.json with the parity record and, when rows
with labels were used, the ONNX model's own validation metrics.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.artifact import stage_log
from slimship.core.config import DataConfig
from slimship.compress.config import OPTIMIZE_LEVELS, ExportConfig  # noqa: F401 (the stage's options)

# Always carried; a family adds its own (vocab.txt, merges.txt, SentencePiece models: families.Family).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")

# Used only when neither --data nor the model's manifest names validation rows: enough to catch a broken graph.
PROBE_SENTENCES = [
    "a gripping, beautifully acted film", "the plot is thin and the jokes fall flat", "I loved every minute of it",
    "a tedious, overlong mess", "not bad at all", "not good at all", "the service was quick and friendly",
    "it broke after two days", "an instant classic", "I want my money back", "surprisingly moving",
    "dull", "brilliant", "neither here nor there, but watchable", "the worst meal I have had in years",
    "A long sentence that goes on and on about nothing in particular, to exercise longer sequences and padding "
    "inside a batch of otherwise short inputs, which is where masking mistakes would show up.",
]


class ParityError(UserError):
    """The ONNX graph does not reproduce the PyTorch model closely enough."""


def parity_rows(source: dict[str, Any], data: DataConfig | None) -> tuple[list, list | None, str]:
    """(inputs, targets or None, where they came from) for the parity check; inputs are (text, text_pair)
    tuples for a pair model."""
    from slimship.core.data import load_configured
    from slimship.core.tasks import takes_pairs

    if data is None or not data.path:
        recorded = source.get("config") or {}
        path = recorded.get("data")
        data = DataConfig(path, text_column=recorded.get("text_column", "text"),
                          label_column=recorded.get("label_column", "label"),
                          text_pair_column=recorded.get("text_pair_column")) \
            if isinstance(path, str) and Path(path).exists() else None
    if data is None:
        probes = list(PROBE_SENTENCES)
        if takes_pairs(source):
            return list(zip(probes, probes[1:] + probes[:1])), None, "built-in probe sentences, paired"
        return probes, None, "built-in probe sentences"
    loaded = load_configured(data, source, splits=("validation",), sample_train=False)
    split = loaded.splits.get("validation")
    if split is None or not split.texts:
        raise UserError(f"{data.path}: no validation rows for the parity check")
    n = data.max_eval_rows or len(split.texts)
    split.take(slice(None, n))
    return split.inputs, split.labels, f"{split.source} (validation, {len(split)} rows)"


def write_provisional_manifest(builder) -> None:
    """A manifest (with digests) inside the artifact being built, so the runtime can load it for checks.

    ``manifest.create`` overwrites it with the final one; the digests of the other files stay the same.
    """
    manifest = dict(builder.manifest)
    manifest["files"] = artifact._file_digests(builder.dir)
    (builder.dir / artifact.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def external_data_files(model_file: str | Path) -> list[str]:
    """The files beside ``model_file`` that hold its weights: a graph over ONNX's 2 GB protobuf limit (a decoder
    LLM teacher) keeps them outside, as optimum writes them (model.onnx_data)."""
    import onnx

    def tensors(graph):
        for tensor in graph.initializer:
            yield tensor
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from tensors(attribute.g)
                for subgraph in attribute.graphs:
                    yield from tensors(subgraph)

    graph = onnx.load(str(model_file), load_external_data=False).graph
    return sorted({entry.value for tensor in tensors(graph) for entry in tensor.external_data
                   if entry.key == "location"})


def copy_onnx_model(model_file: Path, target_dir: Path) -> None:
    """``model_file`` as target_dir/model.onnx, with its external-data files (which it names relative to itself)."""
    shutil.copy(model_file, target_dir / "model.onnx")
    for name in external_data_files(model_file):
        shutil.copy(model_file.parent / name, target_dir / name)


def onnx_file_mb(path: str | Path) -> float:
    """Megabytes of an ONNX model file, its external-data files included."""
    path = Path(path)
    size = path.stat().st_size + sum((path.parent / name).stat().st_size for name in external_data_files(path))
    return round(size / 1e6, 3)


def _optimize(export_dir: Path, level: str, out_file: Path) -> None:
    """ONNX Runtime's transformer optimizer at optimum's level (O2/O3 fuse attention, layer norm, GELU)."""
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    optimizer = ORTOptimizer.from_pretrained(str(export_dir), file_names=["model.onnx"])
    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=False)
    with tempfile.TemporaryDirectory() as tmp:
        optimizer.optimize(config, tmp)
        produced = sorted(Path(tmp).glob("*.onnx"))
        if not produced:
            raise RuntimeError(f"ONNX Runtime optimizer ({level}) wrote no model")
        shutil.copy(produced[0], out_file)


def fused_operators(model_file: Path) -> dict[str, int]:
    """Counts of the fused transformer operators in a graph (shows whether fusion actually happened)."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
                            "FastGelu", "BiasGelu", "Gelu", "LayerNormalization"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def export(model_dir: str | Path, out: str | Path, data: DataConfig | None = None,
           cfg: ExportConfig | None = None) -> Path:
    """PyTorch artifact -> ONNX artifact, refused unless it passes the parity gate."""
    from optimum.exporters.onnx import main_export

    from slimship.compress.evaluate import artifact_logits
    from slimship.core.metrics import task_metrics
    from slimship.core.tasks import task_of, thresholds_of
    from slimship.train import families
    from slimship.train.artifacts import load_pytorch_artifact, predict_logits

    cfg = cfg or ExportConfig()
    cfg.check()
    model_dir, out = Path(model_dir), Path(out)
    source, model, tokenizer = load_pytorch_artifact(model_dir)
    family = families.family_of(model.config, "export")
    if cfg.optimize != "none" and not family.ort_optimizer:
        raise UserError(f"export --optimize {cfg.optimize}: ONNX Runtime's transformer optimizer does not support "
                        f"{family.name}; export it with --optimize none")
    if family.decoder and model.config.pad_token_id != tokenizer.pad_token_id:
        raise UserError(f"export: {model_dir} is a {family.name} model whose config pads with id "
                        f"{model.config.pad_token_id} but whose tokenizer pads with {tokenizer.pad_token_id}; its "
                        f"head reads the last token that is not the pad id, so they must agree (retrain it with "
                        f"slimship train)")
    texts, labels, rows_from = parity_rows(source, data)
    stage_log(f"export {model_dir} -> ONNX (optimize {cfg.optimize}); parity on {rows_from}")

    config = {**asdict(cfg), **(data or DataConfig()).options()}
    with artifact.create(out, "export", format="onnx", parent=model_dir, config=config) as art:
        with tempfile.TemporaryDirectory() as tmp:
            main_export(str(model_dir), output=tmp, task="text-classification", opset=cfg.opset,
                        do_validation=False, no_post_process=True, device="cpu")
            if cfg.optimize == "none":
                copy_onnx_model(Path(tmp) / "model.onnx", art.dir)
            else:
                _optimize(Path(tmp), cfg.optimize, art.dir / "model.onnx")
        for name in (*TOKENIZER_FILES, *family.tokenizer_files):   # whatever the family's tokenizer needs
            if (model_dir / name).is_file():
                shutil.copy(model_dir / name, art.dir / name)
        # The runtime reads no transformers config: it pads with this (RoBERTa's <pad> is id 1, not 0).
        art.manifest["tokenizer"] = families.padding_record(tokenizer)
        art.manifest.update(labels=source["labels"], **task_fields(source), max_length=source["max_length"],
                            optimize=cfg.optimize, fused_operators=fused_operators(art.dir / "model.onnx"),
                            file_mb=onnx_file_mb(art.dir / "model.onnx"))
        for key in ("parameters", "macs", "base_model"):
            if key in source:
                art.manifest[key] = source[key]

        # Parity: the PyTorch model vs the finished artifact through the serving runtime.
        write_provisional_manifest(art)
        torch_logits = predict_logits(model, tokenizer, texts, source["max_length"], cfg.batch_size)
        onnx_logits = artifact_logits(art.dir, texts, cfg.batch_size)
        onnx_alone = artifact_logits(art.dir, texts, 1)
        parity = parity_record(torch_logits, onnx_logits, rows_from, cfg, task_of(source), thresholds_of(source),
                               onnx_alone)
        art.manifest["parity"] = parity
        stage_log(f"parity: {parity['agreement_of']} agreement {parity['agreement'] * 100:.2f}% in mixed-length "
                  f"batches, {parity['agreement_batch1'] * 100:.2f}% at batch 1, over {parity['rows']} rows, "
                  f"max |Δlogit| {parity['max_abs_logit_diff']:.2e}")
        if not parity["passed"]:
            raise ParityError(f"{model_dir}: ONNX export failed the parity gate: {parity['reason']}; "
                              f"nothing was written to {out}")
        if labels is not None:
            art.manifest["metrics"] = {"validation": task_metrics(task_of(source), onnx_logits, labels,
                                                                  source["labels"], thresholds_of(source))}
        else:
            art.manifest["metrics"] = source.get("metrics", {})
            art.manifest["metrics_from"] = "parent (no labelled rows were given to measure the ONNX model)"
    return out


def task_fields(source: dict[str, Any]) -> dict[str, Any]:
    """The task-shape fields a derived artifact carries over from its source (absent ones stay absent)."""
    return {key: source[key] for key in ("task", "text_pairs", "thresholds") if key in source}


def decisions(logits: np.ndarray, task: str, thresholds: list[float] | None) -> np.ndarray:
    """What a row's answer decides, as a comparable array: the label (classification), the set of labels over
    their thresholds (multilabel)."""
    from slimship.core.metrics import multilabel_decisions
    from slimship.core.tasks import MULTILABEL

    if task == MULTILABEL:
        return multilabel_decisions(logits, thresholds)
    return logits.argmax(-1)


def row_agreement(logits_a: np.ndarray, logits_b: np.ndarray, task: str = "classification",
                  thresholds: list[float] | None = None, score_tolerance: float = 0.0) -> float:
    """The share of rows two models answer alike: the same label, the same label set, or (regression) scores
    within ``score_tolerance`` of each other."""
    from slimship.core.tasks import REGRESSION

    if not len(logits_a):
        return 1.0
    if task == REGRESSION:
        return float((np.abs(logits_a[:, 0] - logits_b[:, 0]) <= score_tolerance).mean())
    a, b = decisions(logits_a, task, thresholds), decisions(logits_b, task, thresholds)
    return float((a == b).reshape(len(a), -1).all(axis=1).mean())


def parity_record(torch_logits: np.ndarray, onnx_logits: np.ndarray, rows_from: str, cfg: ExportConfig,
                  task: str = "classification", thresholds: list[float] | None = None,
                  onnx_alone: np.ndarray | None = None) -> dict:
    """Agreement of the ONNX artifact with PyTorch's batched logits, in mixed-length batches (``onnx_logits``)
    and with each row run alone (``onnx_alone``, no padding at all); both must reach ``min_agreement``. Rows
    agree on the label (classification: argmax; multilabel: the whole label set), or for regression on a score
    within ``cfg.max_score_diff``. A pad id or padding side that PyTorch and the runtime get wrong the same way
    shows up only against the unpadded rows (decoders classify from the last non-pad token)."""
    from slimship.core.tasks import MULTILABEL, REGRESSION

    def diff(a, b):
        return float(np.abs(a - b).max()) if len(a) else 0.0

    onnx_alone = onnx_logits if onnx_alone is None else onnx_alone
    agreement = row_agreement(torch_logits, onnx_logits, task, thresholds, cfg.max_score_diff)
    agreement_alone = row_agreement(torch_logits, onnx_alone, task, thresholds, cfg.max_score_diff)
    agreement_of = {MULTILABEL: "label-set", REGRESSION: f"score (|Δ| <= {cfg.max_score_diff:g})"}.get(task, "argmax")
    max_diff = max(diff(torch_logits, onnx_logits), diff(torch_logits, onnx_alone))
    reason = None
    if agreement < cfg.min_agreement:
        reason = (f"{agreement_of} agreement {agreement * 100:.2f}% < {cfg.min_agreement * 100:.2f}% in "
                  f"mixed-length batches")
    elif agreement_alone < cfg.min_agreement:
        reason = f"{agreement_of} agreement {agreement_alone * 100:.2f}% < {cfg.min_agreement * 100:.2f}% at batch 1"
    elif cfg.max_logit_diff is not None and max_diff > cfg.max_logit_diff:
        reason = f"max |Δlogit| {max_diff:.3g} > {cfg.max_logit_diff:.3g}"
    return {"rows": int(len(torch_logits)), "rows_from": rows_from, "agreement": agreement,
            "agreement_batch1": agreement_alone, "agreement_of": agreement_of,
            "max_abs_logit_diff": max_diff, "min_agreement": cfg.min_agreement,
            "max_logit_diff": cfg.max_logit_diff, "passed": reason is None, "reason": reason}
