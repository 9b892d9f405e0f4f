"""The options of the compression stages (distill, prune, trim-vocab, export, quantize) and of the search.

No torch here: the command line is built from these fields, and ``slimship --help`` must not load torch. Each
stage module imports its own config from here; the data every stage reads is ``slimship.core.config.DataConfig``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from slimship.core.config import DataConfig, annotations_of, opt, parse_dataclass, validate
from slimship.core.errors import UserError
from slimship.train.config import FineTuneConfig, TrainConfig

TeacherLogits = Literal["cache", "online"]
Importance = Literal["taylor", "magnitude"]
Optimize = Literal["none", "O1", "O2", "O3"]
QuantizeMode = Literal["dynamic", "static", "weight_only"]
Method = Literal["minmax", "entropy", "percentile"]
Preset = Literal["auto", "avx512_vnni", "avx512", "avx2", "arm64"]
EmbeddingBits = Literal[8, 4]
FfnOutput = Literal["fp32", "weight8"]
WeightBits = Literal[8, 4]
Objective = Literal["throughput", "latency"]

TEACHER_LOGITS = typing.get_args(TeacherLogits)
IMPORTANCE = typing.get_args(Importance)
OPTIMIZE_LEVELS = typing.get_args(Optimize)
MODES = typing.get_args(QuantizeMode)
METHODS = typing.get_args(Method)
PRESETS = typing.get_args(Preset)
EMBEDDING_BITS = typing.get_args(EmbeddingBits)
FFN_OUTPUTS = typing.get_args(FfnOutput)
WEIGHT_BITS = typing.get_args(WeightBits)
OBJECTIVES = typing.get_args(Objective)
QUANTIZE_MODES = ("none", *MODES)   # none: the FP32 export is a candidate itself
VOCAB_MODES = ("full", "train")     # full: the model's own vocabulary; train: only the training data's tokens


def parse_layers(text: str) -> int | list[int]:
    """"3" keeps three evenly spaced layers; "0,2,5" keeps exactly those (0-based); "0," keeps layer 0 only."""
    wrong = f"--layers {text!r}: give a number of layers (3) or a list of 0-based indices (0,2,5)"
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(wrong) from None
    if "," in str(text):
        return values
    if len(values) != 1:
        raise UserError(wrong)
    return values[0]


AUGMENT_METHODS = ("substitute", "mask", "drop")   # compress/augment.py


def parse_methods(text: str) -> str:
    """"substitute,mask" -> the same, checked (a config file may give a list)."""
    items = text if isinstance(text, (list, tuple)) else [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in items if m not in AUGMENT_METHODS]
    if bad or not items:
        raise UserError(f"--augment-methods: {', '.join(bad) or 'nothing given'}: give a comma list of "
                        f"{', '.join(AUGMENT_METHODS)}")
    return ",".join(items)


def check_unlabeled_fits(unlabeled, pairs: bool) -> None:
    """--unlabeled (a file, or its texts) adds single texts; a model that reads sentence pairs cannot learn from
    them."""
    if unlabeled and pairs:
        raise UserError("--unlabeled adds single texts, and this model reads sentence pairs; leave it out (the "
                        "students still learn from augmented copies of the training pairs)")


@dataclass
class TransferOptions:
    """What a student learns the teacher from besides the labelled training rows (compress/augment.py). Every
    extra text is labelled by the teacher; the counts go in the student's manifest."""

    # Auto (None) means 2 copies up to 10,000 training rows, none above (distill.AUTO_AUGMENT_MAX_ROWS): on 5,000
    # SST-2 rows two copies (substitution and span masking) took a 3-layer
    # student from -1.83 to +0.92 points of the teacher on validation and from -2.98 to -0.23 on test
    # (bench/bench_transfer.py, docs/BENCHMARKS.md). Pairs get both sides changed, and every task's copies take the
    # teacher's answer as their target (label, labels over 0.5, or score).
    augment: int | None = field(default=None, metadata=opt(
        "augmented copies of each training input added to the transfer set, labelled by the teacher (default: "
        "2 up to 10,000 training rows, none above; 0: off)"))
    augment_methods: str = field(default="substitute,mask", metadata=opt(
        "how copies are made, taking turns: substitute (words swapped for embedding neighbours), mask (a span "
        "masked), drop (words dropped)", parse=parse_methods))
    unlabeled: str | None = field(default=None, metadata=opt(
        "a file of in-domain text without labels (CSV, TSV, JSONL or Parquet; the --text-column) added to the "
        "transfer set, labelled by the teacher"))
    hidden_weight: float = field(default=0.0, metadata=opt(
        "weight of the hidden-state MSE against the teacher over the layer map (0: off; runs the teacher in "
        "every step)"))
    attention_weight: float = field(default=0.0, metadata=opt(
        "weight of the KL divergence of attention distributions against the teacher over the layer map (0: off; "
        "runs the teacher in every step, with eager attention)"))

    mixup_weight: float = field(default=0.0, metadata=opt(
        "weight of a distillation term on mixed inputs (MixKD): each row's word embeddings mixed with another "
        "row's of the batch, the student matched to the teacher's answer on the same mix (0: off; runs the "
        "teacher in every step)"))

    @property
    def layer_losses(self) -> bool:
        """A hidden-state or attention loss is on: the teacher's activations are needed in every step."""
        return self.hidden_weight > 0 or self.attention_weight > 0

    def check_transfer(self) -> None:
        if self.augment is not None and (not isinstance(self.augment, int) or self.augment < 0):
            raise UserError(f"--augment must be a whole number of copies, 0 or more, not {self.augment!r}")
        self.augment_methods = parse_methods(self.augment_methods)
        if self.unlabeled is not None and not Path(self.unlabeled).is_file():
            raise UserError(f"--unlabeled {self.unlabeled}: no such file")
        if self.hidden_weight < 0:
            raise UserError(f"--hidden-weight must be 0 or more, not {self.hidden_weight}")
        if self.attention_weight < 0:
            raise UserError(f"--attention-weight must be 0 or more, not {self.attention_weight}")
        if self.mixup_weight < 0:
            raise UserError(f"--mixup-weight must be 0 or more, not {self.mixup_weight}")


@dataclass
class DistillConfig(TransferOptions, TrainConfig):
    layers: int | list[int] = field(default=3, metadata=opt(
        "student depth: N teacher layers evenly spaced, or a comma list of 0-based layer indices to keep, "
        "e.g. 0,2,5 (one index: 0,)", parse=parse_layers))
    student: str | None = field(default=None, metadata=opt(
        "instead of dropping layers: a smaller model's config.json (random init, the teacher's tokenizer), or a "
        "checkpoint dir or built-in name of any supported family, which trains on its own tokenizer"))
    temperature: float = field(default=2.0, metadata=opt("softmax temperature T"))
    alpha: float = field(default=0.5, metadata=opt(
        "weight of the distillation term; 1 - alpha goes to the labels"))
    teacher_logits: TeacherLogits = field(default="cache", metadata=opt(
        "compute the teacher's logits once before training (cache, faster on CPU) or in every step (online)"))

    def check(self) -> None:
        super().check()
        if self.temperature <= 0:
            raise UserError(f"--temperature must be positive, not {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], not {self.alpha}")
        self.check_transfer()
        if self.teacher_logits not in TEACHER_LOGITS:
            raise UserError(f"--teacher-logits must be one of {', '.join(TEACHER_LOGITS)}, not {self.teacher_logits!r}")


@dataclass
class PruneConfig(TransferOptions, FineTuneConfig):
    """Pruning ratios and the recovery fine-tuning after each step (its length is recovery_epochs)."""

    heads: float = field(default=0.0, metadata=opt("fraction of attention heads removed per layer"))
    ffn: float = field(default=0.0, metadata=opt("fraction of FFN intermediate channels removed per layer"))
    hidden: float = field(default=0.0, metadata=opt(
        "fraction of the hidden size removed (rounded to whole multiples of the head size)"))
    importance: Importance = field(default="taylor", metadata=opt("how channels are ranked"))
    steps: int = field(default=1, metadata=opt("reach the ratios in K steps, recovering after each"))
    recovery_epochs: float = field(default=1.0, metadata=opt(
        "fine-tuning epochs in all, shared by the steps; 0 skips recovery"))
    importance_batches: int = field(default=8, metadata=opt(
        "training batches whose gradients give the Taylor importance"))
    temperature: float = field(default=2.0, metadata=opt("distillation temperature with --teacher"))
    alpha: float = field(default=0.5, metadata=opt("distillation weight with --teacher"))
    teacher: str | None = field(default=None, metadata=opt(
        "a PyTorch artifact to distil from during recovery (default: plain fine-tuning)"))

    def check(self) -> None:
        super().check()
        for name in ("heads", "ffn", "hidden"):
            ratio = getattr(self, name)
            if not 0.0 <= ratio < 1.0:
                raise UserError(f"--{name} must be a fraction in [0, 1), not {ratio}")
        if not (self.heads or self.ffn or self.hidden):
            raise UserError("nothing to prune: give at least one of --heads, --ffn, --hidden above 0")
        if self.importance not in IMPORTANCE:
            raise UserError(f"--importance must be one of {', '.join(IMPORTANCE)}, not {self.importance!r}")
        if self.steps < 1:
            raise UserError("--steps must be at least 1")
        if self.recovery_epochs < 0:
            raise UserError("--recovery-epochs must be 0 (no recovery) or more")
        if self.importance_batches < 1:
            raise UserError("--importance-batches must be at least 1")
        self.check_transfer()

    def recovery_config(self) -> TrainConfig:
        """The Trainer options of one step's recovery: the shared options, recovery_epochs split over the steps."""
        shared = {f.name: getattr(self, f.name) for f in fields(FineTuneConfig)}
        return TrainConfig(**shared, epochs=self.recovery_epochs / self.steps, max_steps=-1)


@dataclass
class VocabConfig:
    min_count: int = field(default=1, metadata=opt("keep tokens seen at least N times in the training texts"))
    keep_top: int = field(default=0, metadata=opt(
        "also keep the vocabulary's first N ids: in BERT-style vocabularies (MiniLM too) the pretraining corpus's "
        "most frequent pieces, so general words the training split lacks keep their embedding (default: 0, only "
        "the training data's tokens)"))
    eval_batch_size: int = field(default=64, metadata=opt("batch size of the accuracy before and after"))
    quiet: bool = field(default=False, metadata=opt("no progress bar"))

    def check(self) -> None:
        if self.min_count < 1:
            raise UserError(f"--min-count must be at least 1, not {self.min_count}")
        if not isinstance(self.keep_top, int) or self.keep_top < 0:
            raise UserError(f"--keep-top must be a whole number of at least 0, not {self.keep_top!r}")


@dataclass
class ExportConfig:
    optimize: Optimize = field(default="none", metadata=opt(
        "ONNX Runtime graph optimization / fusion level (O2/O3 fuse attention, layer norm, GELU)"))
    opset: int | None = field(default=None, metadata=opt("ONNX opset (default: optimum's choice for the model)"))
    min_agreement: float = field(default=0.995, metadata=opt(
        "least share of parity rows that must agree: the predicted label (the whole label set for multilabel; "
        "for regression, a score within --max-score-diff)"))
    max_score_diff: float = field(default=0.01, metadata=opt(
        "regression: the largest |score difference| of a row that still agrees (in the score's own units)"))
    max_logit_diff: float | None = field(default=None, metadata=opt(
        "also fail when any |logit difference| exceeds this (default: recorded only)"))
    batch_size: int = field(default=64, metadata=opt("rows per call when comparing"))

    def check(self) -> None:
        if self.optimize not in OPTIMIZE_LEVELS:
            raise UserError(f"--optimize must be one of {', '.join(OPTIMIZE_LEVELS)}, not {self.optimize!r}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise UserError("--min-agreement must be between 0 and 1")
        if self.max_score_diff < 0:
            raise UserError("--max-score-diff must be 0 or more")


@dataclass
class QuantizeConfig:
    mode: QuantizeMode = field(default="dynamic", metadata=opt(
        "dynamic: int8 weights, activation scale per call (labels depend on batch-mates); static: calibrated "
        "QDQ; weight_only: 8-bit (or --weight-bits 4) MatMul weights, float activations (both batch-invariant)"))
    weight_bits: WeightBits = field(default=8, metadata=opt(
        "bits per MatMul weight in weight_only mode (MatMulNBits, a scale per block of 32): 4 halves the "
        "weights again, for decoder LLMs whose projections are most of the file"))
    per_channel: bool = field(default=False, metadata=opt("one scale per output channel of each weight"))
    calibration: int = field(default=128, metadata=opt("training rows to calibrate on (static)"))
    method: Method = field(default="minmax", metadata=opt("static calibration method"))
    preset: Preset = field(default="auto", metadata=opt("instruction-set preset (auto: from this CPU)"))
    seed: int = field(default=42, metadata=opt("seed of the calibration sample"))
    embedding_bits: EmbeddingBits = field(default=8, metadata=opt(
        "bits per word-embedding value: 4 (block-wise, a scale per block) cuts a 3-layer MiniLM student's INT8 "
        "file by ~30%% (17.5 -> 12.1 MB) at a small accuracy cost; measure it with --data"))
    embedding_block_size: int = field(default=128, metadata=opt(
        "with --embedding-bits 4: values of an embedding row sharing one scale; smaller is more accurate and a "
        "little larger (a power of two >= 16)"))
    ffn_output: FfnOutput = field(default="fp32", metadata=opt(
        "static: each FFN's second MatMul (input: the GELU's long tail) kept FP32, the fastest; or weight8: its "
        "weights in 8 bits, int8 products per row (batch-invariant), 4x smaller (MiniLM 3-layer: -5 MB) and "
        "10-18%% slower on avx2"))

    def check(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.preset not in PRESETS:
            raise UserError(f"--preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        if self.calibration < 1:
            raise UserError("--calibration must be at least 1 row")
        if self.weight_bits not in WEIGHT_BITS:
            raise UserError(f"--weight-bits must be one of {', '.join(map(str, WEIGHT_BITS))}, "
                            f"not {self.weight_bits!r}")
        if self.weight_bits != 8 and self.mode != "weight_only":
            raise UserError(f"--weight-bits {self.weight_bits} applies to --mode weight_only, not {self.mode}")
        if self.embedding_bits not in EMBEDDING_BITS:
            raise UserError(f"--embedding-bits must be one of {', '.join(map(str, EMBEDDING_BITS))}, "
                            f"not {self.embedding_bits!r}")
        if self.ffn_output not in FFN_OUTPUTS:
            raise UserError(f"--ffn-output must be one of {', '.join(FFN_OUTPUTS)}, not {self.ffn_output!r}")
        if self.ffn_output != "fp32" and self.mode != "static":
            raise UserError(f"--ffn-output {self.ffn_output} applies to --mode static, not {self.mode}")
        size = self.embedding_block_size
        if size < 16 or size & (size - 1):  # GatherBlockQuantized's own constraint
            raise UserError(f"--embedding-block-size must be a power of two of at least 16, not {size!r}")


# --- the search ------------------------------------------------------------------------------------------------

# A grid's per-stage overrides: the stage's own options and the data's (e.g. more training rows to distil on).
OVERRIDES = {"distill": DistillConfig, "prune_options": PruneConfig, "vocab_options": VocabConfig}


@dataclass
class Grid:
    """What to try. Every list is a grid axis; ``distill`` / ``prune_options`` / ``vocab_options`` override the
    stage's options and the data's."""

    layers: list[int] = field(default_factory=lambda: [3])
    # Other students distilled from the teacher beside the layer-dropped ones: built-in names (minilm) or
    # checkpoint dirs of any supported family, each trained on its own tokenizer (a decoder teacher into MiniLM).
    students: list[str] = field(default_factory=list)
    prune: list[dict] = field(default_factory=lambda: [{}, {"heads": 0.5, "ffn": 0.5}])
    # Unfused only: ONNX Runtime applies its own graph fusions when it loads a model, and the offline O2 export
    # was no faster in 8 of 9 measured pairs (up to 14% slower; docs/BENCHMARKS.md) while costing an export each.
    optimize: list[str] = field(default_factory=lambda: ["none"])
    # Batch-invariant modes only: dynamic INT8 changes labels with batch-mates, so by default it could never be
    # chosen and building it would only cost time (add it with --allow-batch-dependent).
    quantize: list[str] = field(default_factory=lambda: ["none", "static"])
    # 4: also each INT8 candidate with its word embeddings in 4 bits (blocks of 128): the 3-layer SST-2 student
    # 23.3 -> 17.9 MB at the same speed and no measured accuracy cost over four calibration samples
    # (docs/BENCHMARKS.md); the speed tie then goes to the smaller file, and the budget decides as for any.
    embedding_bits: list[int] = field(default_factory=lambda: [8, 4])
    # weight8: also each static candidate with its FFN output projections in 8-bit weights (QuantizeConfig
    # ffn_output): -5 MB more for MiniLM 3-layer, but 10-18% slower on avx2, so not in the default grid.
    ffn_output: list[str] = field(default_factory=lambda: ["fp32"])
    weight_bits: list[int] = field(default_factory=lambda: [8])  # weight_only's bits; 4: MatMulNBits 4-bit too
    vocab: list[str] = field(default_factory=lambda: ["full"])  # train: also a trimmed-vocabulary variant
    include_teacher: bool = True        # the teacher itself (exported, quantized) is a candidate too
    # Students train at most 3 epochs (best epoch kept): with the augmented transfer set that is about 40,000
    # examples from 5,000 rows, and measured at 3 epochs (docs/BENCHMARKS.md). The teacher's 10 are a ceiling
    # for a model that early stopping ends; a student's run would mostly wait for its patience. At the teacher's
    # 5e-5 the students were still climbing at epoch 3 (SST-2 5k and MRPC); twice that rate was the measured
    # best of bench_transfer.py.
    distill: dict = field(default_factory=lambda: {"epochs": 3, "learning_rate": 1e-4})   # DistillConfig/DataConfig
    prune_options: dict = field(default_factory=dict)   # PruneConfig/DataConfig fields, e.g. {recovery_epochs: 1}
    vocab_options: dict = field(default_factory=dict)   # VocabConfig/DataConfig fields, e.g. {min_count: 2}

    def check(self, source: str = "grid", section: str | None = None) -> None:
        if any(not isinstance(n, int) or n < 1 for n in self.layers):
            raise UserError(f"{source}: layers must be positive integers, not {self.layers}")
        if any(not isinstance(name, str) or not name.strip() for name in self.students):
            raise UserError(f"{source}: students must be model names or checkpoint directories, not {self.students}")
        for entry in self.prune:
            if not isinstance(entry, dict) or set(entry) - {"heads", "ffn", "hidden"}:
                raise UserError(f"{source}: each prune entry is a mapping of heads/ffn/hidden ratios, not {entry!r}")
            for key, value in entry.items():
                if not isinstance(value, (int, float)) or not 0 <= value < 1:
                    raise UserError(f"{source}: prune ratio {key}={value!r} must be in [0, 1)")
        for level in self.optimize:
            if level not in OPTIMIZE_LEVELS:
                raise UserError(f"{source}: optimize {level!r} is not one of {', '.join(OPTIMIZE_LEVELS)}")
        for mode in self.quantize:
            if mode not in QUANTIZE_MODES:
                raise UserError(f"{source}: quantize {mode!r} is not one of {', '.join(QUANTIZE_MODES)}")
        if not self.embedding_bits or any(b not in EMBEDDING_BITS for b in self.embedding_bits):
            raise UserError(f"{source}: embedding_bits entries must be one of {EMBEDDING_BITS}, "
                            f"not {self.embedding_bits}")
        if not self.ffn_output or any(f not in FFN_OUTPUTS for f in self.ffn_output):
            raise UserError(f"{source}: ffn_output entries must be one of {', '.join(FFN_OUTPUTS)}, "
                            f"not {self.ffn_output}")
        if not self.weight_bits or any(b not in WEIGHT_BITS for b in self.weight_bits):
            raise UserError(f"{source}: weight_bits entries must be one of {WEIGHT_BITS}, not {self.weight_bits}")
        if not self.vocab or any(v not in VOCAB_MODES for v in self.vocab) or len(set(self.vocab)) < len(self.vocab):
            raise UserError(f"{source}: vocab entries must be distinct values of {', '.join(VOCAB_MODES)}, "
                            f"not {self.vocab}")
        for name, cls in OVERRIDES.items():
            setattr(self, name, validate(getattr(self, name), annotations_of(cls, DataConfig, skip=("path",)),
                                         source, f"{section}.{name}" if section else name))
        if not self.optimize or not self.quantize:
            raise UserError(f"{source}: optimize and quantize need at least one entry each")
        if not self.layers and not self.students and not self.include_teacher \
                and not any(any(e.values()) for e in self.prune):
            raise UserError(f"{source}: nothing to search (no layers, no pruning and include_teacher is false)")


def grid_from_dict(values: Any, source: str = "grid", section: str | None = None) -> Grid:
    """A Grid from a mapping (a grid file, or ``grid:`` inside a config file): unknown keys refused."""
    grid = parse_dataclass(Grid, values if values is not None else {}, source, section)
    grid.prune = [entry or {} for entry in grid.prune]
    grid.check(source, section)
    return grid


def load_grid(path) -> Grid:
    from slimship.core.config import load_yaml

    return grid_from_dict(load_yaml(path), str(path))


@dataclass
class CompressConfig:
    max_accuracy_drop: float = field(default=1.0, metadata=opt(
        "points of the task's main metric the chosen model may lose against the teacher, on the validation "
        "split: accuracy points (classification and pairs), micro-F1 points (multilabel), Pearson r x 100 "
        "(regression)", flags=("--max-metric-drop",)))
    max_model_mb: float | None = field(default=None, metadata=opt(
        "and a model file of at most MB megabytes (default: any size); 4-bit embeddings and vocabulary trimming "
        "in the grid are what bring a MiniLM student under about 9 MB"))
    objective: Objective = field(default="throughput", metadata=opt(
        "'fastest' means: most rows/s at batch 32, or lowest batch-1 p50"))
    speed_tie: float = field(default=0.10, metadata=opt(
        "candidates within this fraction of the fastest in-budget candidate's time per row count as equally "
        "fast, and the smallest file among them is chosen (0: strictly the fastest)"))
    grid: Grid = field(default_factory=Grid)
    train: TrainConfig = field(default_factory=TrainConfig)   # base options of the distill / prune stages
    threads: int | None = field(default=None, metadata=opt(
        "ONNX Runtime threads for measuring speed (default: every usable core)"))
    calibration: int = field(default=128, metadata=opt("training rows for static INT8"))
    allow_batch_dependent: bool = field(default=False, metadata=opt(
        "let dynamic INT8 be chosen: its per-call activation scale makes a text's label depend on the other "
        "texts in its batch (by default only batch-invariant candidates are chosen)"))
    unlabeled: str | None = field(default=None, metadata=opt(
        "a file of in-domain text without labels (CSV, TSV, JSONL or Parquet; the --text-column): every student "
        "also learns the teacher's answers on it, in distillation and in pruning recovery"))
    latency_rows: int = field(default=200, metadata=opt("batch-1 calls timed per candidate"))
    throughput_rows: int = field(default=512, metadata=opt("rows timed at batch 32 per candidate"))

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.max_accuracy_drop < 0:
            raise UserError("--max-accuracy-drop must be 0 or more (points of the main metric)")
        if not 0 <= self.speed_tie < 1:
            raise UserError(f"--speed-tie must be a fraction in [0, 1), not {self.speed_tie!r}")
        if self.max_model_mb is not None and not self.max_model_mb > 0:
            raise UserError(f"--max-model-mb must be a positive number of MB, not {self.max_model_mb!r}")
        if self.threads is not None and self.threads < 1:
            raise UserError("--threads must be at least 1")
        if self.unlabeled is not None and not Path(self.unlabeled).is_file():
            raise UserError(f"--unlabeled {self.unlabeled}: no such file")
        self.grid.check()
        self.train.check()
