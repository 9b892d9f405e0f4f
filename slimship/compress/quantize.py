"""INT8 quantization of an ONNX artifact: dynamic (weights int8, activations at run time) or static (QDQ).

    quantize("runs/student-onnx", "runs/student-int8", DataConfig("data/"), QuantizeConfig(mode="dynamic"))

The instruction-set preset (avx512_vnni, avx2, arm64) is picked from the CPU and recorded: it decides the
weight/activation integer types exactly as optimum's ``AutoQuantizationConfig`` presets do. The quantizer itself
is ONNX Runtime's ``quantize_dynamic`` / ``quantize_static``, called directly: optimum's ``ORTQuantizer`` fails on
transformer-fused graphs with onnxruntime 1.32, and the budgeted search quantizes fused graphs too (the
``DefaultTensorType`` option is what lets fused contrib ops through).

Static quantization is calibrated on ``calibration`` training rows (min-max, entropy or percentile). When data
is given, accuracy before and after and the share of agreeing predictions are recorded, with sizes before and
after.

``embedding_bits=4`` first stores the word-embedding table block-wise in 4 bits (ONNX Runtime's
``MatMulNBitsQuantizer`` turns its Gather into the contrib op ``GatherBlockQuantized``), then runs the INT8 pass on
the rest. The table is most of a small student's file (MiniLM's is 30522 x 384, 11.7M of a 3-layer student's
17.4M parameters); each row gets its own scale per block, and the accuracy cost is measured like the INT8 one.
"""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.artifact import stage_log
from slimship.core.config import DataConfig

from slimship.compress.config import (EMBEDDING_BITS, METHODS, MODES, PRESETS,  # noqa: F401 (the stage's options)
                                      QuantizeConfig)

WEIGHT_ONLY_BLOCK = 32           # weights per 8-bit scale in weight_only mode

# Whether a text's output depends on that text alone. Dynamic INT8 (DynamicQuantizeMatMul) picks each call's
# activation scale from everything in the call, padding and batch-mates included, so the same text can get
# another label in another batch (0.4-1.7% of SST-2 labels measured). Static QDQ uses scales fixed at
# calibration, weight-only keeps activations float (or quantizes them per row block): the batch cannot matter.
BATCH_INVARIANT = {"none": True, "static": True, "weight_only": True, "dynamic": False}


def batch_invariant(mode: str) -> bool:
    """True when a model quantized with ``mode`` ("none" = FP32) answers each text independently of its batch."""
    return BATCH_INVARIANT[mode]


# Static INT8 quantizes only these: the preset's long list (LayerNormalization, Where, Transpose, ...) added QDQ
# pairs that cost accuracy (bench/bench_int8.py, MiniLM on SST-2: -8.5 pt with it, -0.1 pt with this). The FFN's
# second MatMul is not among them: see static_defaults.
STATIC_OP_TYPES = ["MatMul", "Gather"]
ACTIVATIONS = ("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Erf", "Tanh", "Relu", "Sigmoid")


def activation_fed_matmuls(model) -> list[str]:
    """MatMuls whose input is an FFN activation's output (GELU and kin): the FFN's second projection.

    Its input has the widest range in a transformer (a long GELU tail), so one fixed INT8 scale for it costs
    the most accuracy; static INT8 keeps these FP32 or gives them 8-bit weights (static_defaults). Found
    by structure (the activation a few Mul/Add/Div steps up), not by the exporter's node names. Unnamed ones are
    named so they can be excluded."""
    producers = {out: node for node in model.graph.node for out in node.output}

    def from_activation(tensor: str, depth: int = 0) -> bool:
        node = producers.get(tensor)
        if node is None or depth > 3:
            return False
        if node.op_type in ACTIVATIONS:
            return True
        return node.op_type in ("Mul", "Add", "Div") and any(from_activation(i, depth + 1) for i in node.input)

    names = {n.name for n in model.graph.node}
    found = []
    for i, node in enumerate(model.graph.node):
        if node.op_type == "MatMul" and from_activation(node.input[0]):
            if not node.name:
                node.name = next(f"ffn_output_matmul_{i}_{k}" for k in range(len(names) + 1)
                                 if f"ffn_output_matmul_{i}_{k}" not in names)
            found.append(node.name)
    return found


def cpu_preset() -> str:
    """The optimum preset that suits this CPU: VNNI int8 dot products, plain AVX2/AVX-512, or arm64."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        flags = set()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def preset_settings(preset: str, static: bool, per_channel: bool) -> dict[str, Any]:
    """Integer types and operators of an optimum preset, as plain values for onnxruntime's quantizers."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=static, per_channel=per_channel)
    return {"weight_type": qconfig.weights_dtype, "activation_type": qconfig.activations_dtype,
            "reduce_range": bool(qconfig.reduce_range), "op_types": list(qconfig.operators_to_quantize),
            "weights_symmetric": bool(qconfig.weights_symmetric),
            "activations_symmetric": bool(qconfig.activations_symmetric)}


class TokenizedRows:
    """ONNX Runtime calibration reader: one tokenized row per step, fed through the artifact's own tokenizer."""

    def __init__(self, artifact_dir: Path, texts: list, max_length: int, input_names: list[str]):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(artifact_dir / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=max_length)
        self.feeds = []
        for enc in tokenizer.encode_batch([t if isinstance(t, str) else tuple(t) for t in texts]):
            row = {"input_ids": [enc.ids], "attention_mask": [enc.attention_mask], "token_type_ids": [enc.type_ids]}
            self.feeds.append({k: np.array(row[k], dtype=np.int64) for k in input_names})
        self.position = 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def _calibration_texts(data: DataConfig, cfg: QuantizeConfig, source: dict[str, Any]) -> list:
    import random

    from slimship.core.data import load_configured

    train = load_configured(data, source, splits=("train",)).splits["train"]
    rng = random.Random(cfg.seed)
    return rng.sample(train.inputs, min(cfg.calibration, len(train.texts)))


def _validation(data: DataConfig | None, source: dict[str, Any]):
    from slimship.core.data import load_configured

    if data is None or not data.path:
        return None
    split = load_configured(data, source, splits=("validation",), sample_train=False).splits.get("validation")
    if split is None:
        return None
    split.take(slice(None, data.max_eval_rows))
    return split.inputs, split.labels


def _input_names(model_file: Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(model_file), load_external_data=False).graph.input]


@contextmanager
def quiet_root_logger():
    """onnxruntime's quantizer logs advice on the root logger at WARNING; keep the user's terminal readable.
    Handlers are restored too: importing onnxruntime's matmul_nbits_quantizer calls ``logging.basicConfig``."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def word_embedding_gather(model) -> tuple[Any, Any]:
    """The Gather node that looks up the word embeddings, and its table: the largest 2-D float initializer.

    Position and token-type tables are 2-D too but far smaller, so the size alone tells the word table apart
    without relying on the exporter's node names."""
    import onnx

    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    tables = [t for t in model.graph.initializer if len(t.dims) == 2 and t.data_type in float_types]
    if not tables:
        raise UserError("--embedding-bits 4: the model has no 2-D float initializer to take as word embeddings")
    table = max(tables, key=lambda t: t.dims[0] * t.dims[1])
    lookups = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == table.name]
    users = [n for n in model.graph.node if table.name in n.input]
    if len(lookups) != 1 or len(users) != 1:
        used_by = ", ".join(sorted({n.op_type for n in users})) or "nothing"
        raise UserError(f"--embedding-bits 4 needs the word embeddings ({table.name}) read by one plain Gather; "
                        f"here {used_by} reads them (an optimized export may fuse them into "
                        "EmbedLayerNormalization: quantize an export made with --optimize none)")
    return lookups[0], table


def quantize_word_embeddings(src_model: Path, target: Path, block_size: int) -> dict[str, Any]:
    """Write ``src_model`` with its word-embedding Gather replaced by a 4-bit GatherBlockQuantized; all else as is.

    Blocks run along the hidden axis, so each token's row has its own scales. The INT8 pass that follows leaves
    the contrib op alone: its op type is not among the ones it quantizes."""
    import onnx

    with quiet_root_logger():  # the import calls logging.basicConfig(level=INFO); undone on leaving
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                         MatMulNBitsQuantizer)
        except ModuleNotFoundError as e:  # onnxruntime imports onnx_ir there without declaring it
            raise UserError(f"--embedding-bits 4 needs the package {e.name} (pip install onnx-ir)") from e

    model = onnx.load(str(src_model))
    lookup, table = word_embedding_gather(model)
    rows, width = table.dims
    if not lookup.name:  # exclusion goes by node name, and unnamed Gathers must not match the target
        names = {n.name for n in model.graph.node}
        lookup.name = next(f"word_embeddings_gather_{i}" for i in range(len(names) + 1)
                           if f"word_embeddings_gather_{i}" not in names)
    other_gathers = [n.name for n in model.graph.node if n.op_type == "Gather" and n is not lookup]
    # ONNX shape inference cannot see through a contrib op: state the lookup's output type (what the Gather's
    # was), or static calibration finds no float tensors after it and has no ranges for the embedding LayerNorm.
    known = {v.name for v in model.graph.value_info}
    if lookup.output[0] not in known:
        inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
        model.graph.value_info.extend(v for v in inferred if v.name == lookup.output[0])
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, bits=4,
                                          op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=other_gathers, algo_config=config)
    # All-zero rows (such as [PAD]'s) divide by a zero scale in a branch that np.where then discards.
    with quiet_root_logger(), np.errstate(divide="ignore", invalid="ignore"):
        quantizer.process()  # raises opset to 21 and IR to 10, which 4-bit tensors need
    quantized = quantizer.model.model
    if sum(n.op_type == "GatherBlockQuantized" for n in quantized.graph.node) != 1:
        raise RuntimeError(f"4-bit quantization of {table.name} did not yield one GatherBlockQuantized node")
    onnx.save(quantized, str(target))
    return {"embedding_bits": 4, "embedding_block_size": block_size, "embedding_table": table.name,
            "embedding_shape": [int(rows), int(width)]}


def static_defaults(model_file: Path, work_dir: Path, preset: str, ffn_output: str = "fp32"
                    ) -> tuple[Path, dict[str, Any], list[str]]:
    """The model to quantize statically, write_int8's ``op_types`` / ``nodes_to_exclude`` for it, and the MatMuls
    given 8-bit weights before the static pass.

    Each FFN's second MatMul (``activation_fed_matmuls``) stays FP32 (``ffn_output="fp32"``), or first becomes an
    8-bit weight-only ``MatMulNBits`` with int8 products over per-row activation blocks (``"weight8"``): its input
    still gets no fixed scale, each row its own, while its weight shrinks 4x; it is then no MatMul the static pass
    touches. Measured on the 3-layer SST-2 student (docs/BENCHMARKS.md): the same accuracy either way, 23.3 ->
    18.2 MB, 10-18% slower at batch 32 (with float products, accuracy_level 0, batch 1 took twice as long)."""
    import onnx

    model = onnx.load(str(model_file))
    before = [n.name for n in model.graph.node]
    ffn_outputs = activation_fed_matmuls(model)
    if [n.name for n in model.graph.node] != before or (ffn_output == "weight8" and ffn_outputs):
        model_file = work_dir / "model-named.onnx"
        onnx.save(model, str(model_file))
    if ffn_output == "fp32" or not ffn_outputs:
        return model_file, {"op_types": list(STATIC_OP_TYPES), "nodes_to_exclude": ffn_outputs}, []
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in set(ffn_outputs)]
    target = work_dir / "model-ffn-output-8bit.onnx"
    write_int8(model_file, target, "weight_only", preset_settings(preset, False, False), work_dir=work_dir,
               nodes_to_exclude=others, weight_bits=8, accuracy_level=4)
    return target, {"op_types": list(STATIC_OP_TYPES), "nodes_to_exclude": []}, ffn_outputs


def write_int8(src_model: Path, target: Path, mode: str, settings: dict[str, Any], *, per_channel: bool = False,
               method: str = "minmax", reader: TokenizedRows | None = None, work_dir: Path,
               op_types: list[str] | None = None, nodes_to_exclude: list[str] | None = None,
               accuracy_level: int | None = None, weight_bits: int = 8) -> None:
    """Quantize ``src_model`` into ``target`` with ONNX Runtime's quantizers (the part bench/bench_int8.py varies).

    dynamic: ``quantize_dynamic`` (per-call activation scales: not batch-invariant). static: QDQ with the
    activation ranges calibrated on ``reader``. weight_only: MatMul weights in ``weight_bits`` (8 or 4) bits per
    block (``MatMulNBits``);
    activations stay float, or with ``accuracy_level=4`` are quantized per row block, so a row never sees another's
    values either way."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_dynamic, quantize_static

    # Fused contrib ops (Attention, SkipLayerNormalization) carry no type information the quantizer can read.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": settings["weights_symmetric"],
             "ActivationSymmetric": settings["activations_symmetric"]}
    op_types = op_types or settings["op_types"]
    if mode == "dynamic":
        quantize_dynamic(src_model, target, op_types_to_quantize=op_types, per_channel=per_channel,
                         reduce_range=settings["reduce_range"], weight_type=settings["weight_type"],
                         nodes_to_exclude=nodes_to_exclude, extra_options=extra)
    elif mode == "static":
        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                     "percentile": CalibrationMethod.Percentile}[method]
        quantize_static(src_model, target, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                        per_channel=per_channel, reduce_range=settings["reduce_range"],
                        activation_type=settings["activation_type"], weight_type=settings["weight_type"],
                        calibrate_method=calibrate, nodes_to_exclude=nodes_to_exclude,
                        extra_options={**extra, "CalibTensorRangeSymmetric": False},
                        calibration_cache_path=work_dir / "calibration")
    elif mode == "weight_only":
        with quiet_root_logger():
            from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                         MatMulNBitsQuantizer)
        config = DefaultWeightOnlyQuantConfig(block_size=WEIGHT_ONLY_BLOCK, is_symmetric=True, bits=weight_bits,
                                              accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src_model)), nodes_to_exclude=nodes_to_exclude or [],
                                         algo_config=config)
        with quiet_root_logger():
            quantizer.process()
        onnx.save(quantizer.model.model, str(target))
    else:
        raise UserError(f"unknown quantization mode {mode!r}")


def quantize(onnx_dir: str | Path, out: str | Path, data: DataConfig | None, cfg: QuantizeConfig) -> Path:
    """ONNX artifact -> INT8 ONNX artifact, with accuracy and size before and after."""
    from slimship.compress.export import external_data_files, onnx_file_mb, write_provisional_manifest
    from slimship.compress.evaluate import artifact_logits
    from slimship.compress.config import ExportConfig
    from slimship.compress.export import row_agreement, task_fields
    from slimship.core.metrics import main_value, metric_label, summary_line, task_metrics
    from slimship.core.tasks import main_metric, task_of, thresholds_of

    cfg.check()
    if cfg.mode == "static" and (data is None or not data.path):
        raise UserError("--mode static needs --data: calibration runs on training rows")
    onnx_dir, out = Path(onnx_dir), Path(out)
    source = artifact.load(onnx_dir, format="onnx")
    if source.get("quantization"):
        raise UserError(f"{onnx_dir}: already quantized ({source['quantization']['mode']}); quantize the FP32 "
                        "export instead")
    if cfg.mode == "static" and source.get("optimize", "none") != "none":
        raise UserError(f"{onnx_dir}: static (QDQ) quantization needs an unfused export (this one is optimized "
                        f"{source['optimize']}); ONNX Runtime fuses the QDQ graph itself when it loads it")
    preset = cpu_preset() if cfg.preset == "auto" else cfg.preset
    settings = preset_settings(preset, cfg.mode == "static", cfg.per_channel)
    src_model = onnx_dir / "model.onnx"
    kind = f"weight-only {cfg.weight_bits}-bit" if cfg.mode == "weight_only" else f"{cfg.mode} INT8"
    stage_log(f"quantize {onnx_dir}: {kind}, preset {preset}"
              + (f", {cfg.method} calibration on {cfg.calibration} rows" if cfg.mode == "static" else "")
              + (f", word embeddings 4-bit (blocks of {cfg.embedding_block_size})" if cfg.embedding_bits == 4
                 else "")
              + (", FFN output projections in 8-bit weights" if cfg.ffn_output == "weight8" else ""))

    validation = _validation(data, source)
    before_logits = artifact_logits(onnx_dir, validation[0]) if validation else None

    config = {**asdict(cfg), **(data or DataConfig()).options(), "preset": preset}
    with artifact.create(out, "quantize", format="onnx", parent=onnx_dir, config=config) as art:
        with tempfile.TemporaryDirectory() as tmp, quiet_root_logger():
            target = art.dir / "model.onnx"
            int8_input = src_model
            embeddings = {"embedding_bits": 8}
            if cfg.embedding_bits == 4:
                int8_input = Path(tmp) / "model-embeddings-4bit.onnx"
                embeddings = quantize_word_embeddings(src_model, int8_input, cfg.embedding_block_size)
            reader, static_options, weight_only_8bit = None, {}, []
            if cfg.mode == "static":
                texts = _calibration_texts(data, cfg, source)
                reader = TokenizedRows(onnx_dir, texts, source["max_length"], _input_names(src_model))
                int8_input, static_options, weight_only_8bit = static_defaults(int8_input, Path(tmp), preset,
                                                                               cfg.ffn_output)
            write_int8(int8_input, target, cfg.mode, settings, per_channel=cfg.per_channel, method=cfg.method,
                       reader=reader, work_dir=Path(tmp), weight_bits=cfg.weight_bits, **static_options)
        source_weights = {"model.onnx", *external_data_files(src_model)}   # replaced by the quantized model
        for name in sorted(p.name for p in onnx_dir.iterdir()):
            if name not in source_weights and name != artifact.MANIFEST and (onnx_dir / name).is_file() \
                    and name in source["files"]:
                shutil.copy(onnx_dir / name, art.dir / name)
        size_before, size_after = onnx_file_mb(src_model), onnx_file_mb(target)
        art.manifest.update(labels=source["labels"], **task_fields(source), max_length=source["max_length"],
                            optimize=source.get("optimize", "none"), file_mb=size_after)
        for key in ("parameters", "macs", "base_model", "parity", "tokenizer"):
            if key in source:
                art.manifest[key] = source[key]
        quantization = {"mode": cfg.mode, "batch_invariant": batch_invariant(cfg.mode), "preset": preset,
                        "per_channel": cfg.per_channel,
                        "weight_type": f"int{cfg.weight_bits} per block of {WEIGHT_ONLY_BLOCK}"
                        if cfg.mode == "weight_only"
                        else str(settings["weight_type"]),
                        "activation_type": {"static": str(settings["activation_type"]),
                                            "dynamic": "uint8 (scale per call)"}.get(cfg.mode, "float"),
                        "reduce_range": settings["reduce_range"], "operators": settings["op_types"],
                        "size_mb_before": size_before, "size_mb_after": size_after, **embeddings}
        if cfg.mode == "static":
            quantization.update(calibration_rows=cfg.calibration, method=cfg.method,
                                operators=static_options["op_types"],
                                kept_fp32=static_options["nodes_to_exclude"], ffn_output=cfg.ffn_output,
                                weight_only_8bit=weight_only_8bit)
        if validation:
            write_provisional_manifest(art)
            after_logits = artifact_logits(art.dir, validation[0])
            task, thresholds = task_of(source), thresholds_of(source)
            before = task_metrics(task, before_logits, validation[1], source["labels"], thresholds)
            after = task_metrics(task, after_logits, validation[1], source["labels"], thresholds)
            # The main metric (accuracy, micro-F1 or Pearson r) before and after, and how many rows keep their
            # answer: the label, the label set, or (regression) a score within ExportConfig's default tolerance.
            quantization.update(
                metric=main_metric(task), metric_before=main_value(before, task), metric_after=main_value(after, task),
                agreement=row_agreement(before_logits, after_logits, task, thresholds, ExportConfig().max_score_diff))
            if task == "classification":
                quantization.update(accuracy_before=before["accuracy"], accuracy_after=after["accuracy"])
            art.manifest["metrics"] = {"validation": after}
            stage_log(f"{metric_label(main_metric(task))}: {summary_line(before)} -> {summary_line(after)}, "
                      f"size {size_before:.1f} MB -> {size_after:.1f} MB")
        else:
            art.manifest["metrics"] = {}
            stage_log(f"size {size_before:.1f} MB -> {size_after:.1f} MB (no --data: accuracy not measured)")
        art.manifest["quantization"] = quantization
    return out
