"""Budgeted compression: the fastest model within X points of the teacher's main metric (accuracy; micro-F1 for
multi-label; Pearson r for regression), searched over the chain.

    compress("runs/teacher", "runs/compressed", DataConfig("data/"), CompressConfig(max_accuracy_drop=1.0)) -> Path

The grid is a tree. From the teacher: distil a student per depth in ``layers``; prune each student per entry
in ``prune`` (with KD from the teacher during recovery); with ``vocab`` listing ``train``, trim the vocabulary
of every student and pruned model to the tokens the training data uses (compress/vocab.py, ``-vocab`` nodes);
export every PyTorch model per ``optimize`` level (unfused / ONNX Runtime fusion); quantize every export per
``quantize`` mode (none = FP32, dynamic, static).
Every ONNX leaf is a candidate: its validation accuracy and macro-F1, batch-1 latency and batch-32 throughput
are measured on this machine with an explicit thread count, and the fastest candidate (by ``objective``)
within the budget wins. It is written as an ONNX artifact at ``out/model``; report.json, report.md and
pareto.png go in ``out``.

Resumable: each node of the tree is its own artifact under ``out/candidates/<name>``, and each measured
candidate keeps its numbers in ``measurement.json`` beside its manifest. A rerun after a crash verifies and
reuses what is finished, and a crashed training stage resumes from its own checkpoints.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from slimship.core.errors import UserError
from slimship.core.metrics import headline, main_value, metric_label, task_metrics
from slimship.core.report import metric_of
from slimship.core.tasks import main_metric, takes_pairs, task_of, thresholds_of
from slimship.compress.export import task_fields
from slimship.core import artifact
from slimship.core.artifact import ArtifactError, stage_log
from slimship.compress.config import (DistillConfig, ExportConfig, PruneConfig, QuantizeConfig, VocabConfig,
                                      CompressConfig, Grid, check_unlabeled_fits, grid_from_dict, load_grid)  # noqa: F401 (re-exported)
from slimship.core.config import DataConfig, content_key

class BudgetNotMet(UserError):
    """No candidate stays within the accuracy budget (the report is still written)."""


@dataclass
class Node:
    """One artifact of the search tree."""

    name: str
    stage: str                      # teacher, distill, prune, export, quantize
    parent: "Node | None"
    options: dict[str, Any]

    @property
    def pytorch(self) -> bool:
        return self.stage in ("teacher", "distill", "prune", "vocab")


def student_node_names(students: list[str]) -> dict[str, str]:
    """A node name per grid student: S-<its name or directory name>, made unique and safe as a path."""
    import re

    names: dict[str, str] = {}
    for spec in students:
        base = "S-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec.rstrip("/")).name or spec)
        name, k = base, 2
        while name in names.values():
            name, k = f"{base}-{k}", k + 1
        names[spec] = name
    return names


def quantize_variants(grid: Grid, fused: bool) -> list[tuple[str, dict[str, Any]]]:
    """(name suffix, quantize options) of every quantized candidate the grid asks of one export. Static QDQ needs
    the unfused graph (ORT fuses the QDQ graph at load), and so do 4-bit word embeddings (a fused export hides the
    table in EmbedLayerNorm); weight_only comes once per weight_bits entry, static once per ffn_output entry."""
    variants = []
    for mode in grid.quantize:
        if mode == "none" or (mode == "static" and fused):
            continue
        for bits in grid.embedding_bits:
            if bits == 4 and fused:
                continue
            weight_bits = grid.weight_bits if mode == "weight_only" and bits == 8 else [8]
            ffn_outputs = grid.ffn_output if mode == "static" else ["fp32"]
            for wbits, ffn in itertools.product(weight_bits, ffn_outputs):
                options = {"mode": mode, **({"weight_bits": 4} if wbits == 4 else {}),
                           **({"embedding_bits": 4} if bits == 4 else {}),
                           **({"ffn_output": ffn} if ffn != "fp32" else {})}
                variants.append((f"int{wbits}-{mode}" + ("-emb4" if bits == 4 else "")
                                 + ("-ffn8" if ffn != "fp32" else ""), options))
    return variants


def plan(teacher_layers: int, grid: Grid, unfused: frozenset[str] = frozenset()) -> list[Node]:
    """Every node of the tree, parents before children. ``unfused``: grid students whose family ONNX Runtime's
    optimizer does not know (exported with optimize none only)."""
    teacher = Node("teacher", "teacher", None, {})
    # A depth equal to the teacher's is the teacher itself (include_teacher covers it).
    students = [Node(f"L{n}", "distill", teacher, {"layers": n}) for n in grid.layers if n < teacher_layers]
    # Students of their own (any family, own tokenizer) go on to vocabulary trimming, export and quantization;
    # pruning is for the layer-dropped ones, which share the teacher's family.
    own = [Node(name, "distill", teacher, {"student": spec})
           for spec, name in student_node_names(grid.students).items()]
    nodes = [teacher, *students, *own]
    bases = ([teacher] if grid.include_teacher else []) + students + own
    for model in students or [teacher]:       # prune the students; the teacher only when there are none
        for entry in grid.prune:
            ratios = {k: float(v) for k, v in sorted(entry.items()) if v}
            if ratios:
                tag = "-".join(f"{k}{v:g}" for k, v in ratios.items())
                pruned = Node(f"{model.name}-prune-{tag}", "prune", model, ratios)
                nodes.append(pruned)
                bases.append(pruned)
    if "train" in grid.vocab:
        # The smaller models only: the teacher is the reference, not a size candidate. Without "full" the
        # untrimmed students and pruned models are built (they are the trimmed ones' parents) but not exported.
        trimmed = [Node(f"{base.name}-vocab", "vocab", base, {"vocab": "train"})
                   for base in bases if base.stage != "teacher"]
        nodes.extend(trimmed)
        bases = [base for base in bases if "full" in grid.vocab or base.stage == "teacher"] + trimmed
    def fusable(base: Node) -> bool:
        while base.stage != "distill" and base.parent is not None:
            base = base.parent
        return base.options.get("student") not in unfused

    exports = [Node(f"{base.name}-onnx" + ("" if level == "none" else f"-{level}"), "export", base,
                    {"optimize": level}) for base in bases for level in grid.optimize
               if level == "none" or fusable(base)]
    nodes.extend(exports)
    for export in exports:
        for suffix, options in quantize_variants(grid, fused=export.options["optimize"] != "none"):
            nodes.append(Node(f"{export.name}-{suffix}", "quantize", export, options))
    return nodes


def candidates(nodes: list[Node], grid: Grid) -> list[Node]:
    """The ONNX leaves that get measured (an FP32 export only when quantize lists none)."""
    return [n for n in nodes if n.stage == "quantize" or (n.stage == "export" and "none" in grid.quantize)]


class Search:
    def __init__(self, teacher_dir: Path, out: Path, data: DataConfig, cfg: CompressConfig):
        self.teacher_dir, self.out, self.data, self.cfg = teacher_dir, out, data, cfg
        self.dirs: dict[str, Path] = {}
        self.fingerprints: dict[str, str] = {}

    def fingerprint(self, data: DataConfig) -> str:
        """The data's content digest (once per distinct data settings: hashing the files takes a moment)."""
        settings = json.dumps(data.options(), sort_keys=True, default=str)
        if settings not in self.fingerprints:
            self.fingerprints[settings] = data.fingerprint()
        return self.fingerprints[settings]

    def file_digest(self, path: str) -> str:
        """sha256 of a file the stages read besides the data (--unlabeled), once per search: every node's key
        includes its parents' keys, so it is asked for many times."""
        if path not in self.fingerprints:
            self.fingerprints[path] = artifact.sha256_file(Path(path))
        return self.fingerprints[path]

    def settings(self, node: Node) -> tuple[DataConfig, Any]:
        """The data and the options a node's stage runs with: the run's, the grid's overrides, the node's own."""
        t, grid = self.cfg.train, self.cfg.grid
        overrides = {"distill": grid.distill, "prune": grid.prune_options, "vocab": grid.vocab_options}.get(node.stage, {})
        data_keys = {f.name for f in fields(DataConfig)} - {"path"}
        data_over = {k: v for k, v in overrides.items() if k in data_keys}
        own = {k: v for k, v in overrides.items() if k not in data_keys}
        data = replace(self.data, **data_over)
        transfer = {"unlabeled": self.cfg.unlabeled} if self.cfg.unlabeled else {}
        if node.stage == "distill":
            return data, DistillConfig(**{**t.as_dict(), **transfer, **own, **node.options})
        if node.stage == "prune":
            base = {f.name: getattr(t, f.name) for f in fields(PruneConfig) if hasattr(t, f.name)}
            return data, PruneConfig(**{**base, **transfer, **own, **node.options, "teacher": str(self.teacher_dir)})
        if node.stage == "vocab":    # every training row is counted unless the grid says otherwise
            data = replace(self.data, max_train_rows=None, **data_over)
            return data, VocabConfig(**{"eval_batch_size": t.eval_batch_size, "quiet": t.quiet, **own})
        if node.stage == "export":
            return data, ExportConfig(optimize=node.options["optimize"])
        if node.stage == "quantize":  # calibration rows are drawn from every training row
            return replace(data, max_train_rows=None), QuantizeConfig(
                mode=node.options["mode"], embedding_bits=node.options.get("embedding_bits", 8),
                weight_bits=node.options.get("weight_bits", 8),
                ffn_output=node.options.get("ffn_output", "fp32"),
                calibration=self.cfg.calibration, seed=t.seed)
        raise ValueError(f"no stage settings for {node.stage!r}")

    def path(self, node: Node) -> Path:
        return self.teacher_dir if node.stage == "teacher" else self.out / "candidates" / node.name

    def key(self, node: Node) -> str:
        """What a node's artifact depends on: its stage options, the stage settings, the data and its parent.

        A finished candidate is reused only when its key matches, so changing the grid or the training options
        rebuilds what they affect and nothing else.
        """
        if node.stage == "teacher":
            return artifact.manifest_digest(self.teacher_dir)
        data, cfg = self.settings(node)
        # Contents, not paths: the data files' digests, the parent's key (down to the teacher's manifest digest).
        options = {k: v for k, v in asdict(cfg).items() if k not in ("quiet", "resume", "teacher")}
        if options.get("unlabeled"):   # its contents, like the data's
            options["unlabeled"] = self.file_digest(options["unlabeled"])
        return content_key({"stage": node.stage, "options": node.options, "parent": self.key(node.parent),
                            "data": self.fingerprint(data), "config": options})

    def finished(self, node: Node) -> bool:
        """A verified artifact made from the same inputs is already there."""
        path = self.path(node)
        if node.stage == "teacher":
            return True
        try:
            artifact.load(path)
        except ArtifactError:
            return False
        key_file = path / "search-key.json"
        return key_file.is_file() and json.loads(key_file.read_text()).get("key") == self.key(node)

    def build(self, node: Node) -> Path:
        """Make a node's artifact unless a verified one is already there."""
        path = self.path(node)
        if self.finished(node):
            return path
        parent = self.path(node.parent)
        # Resume a crashed stage from its checkpoints only when they were made from the same inputs.
        started = path.parent / f".{node.name}.started"
        same_inputs = started.is_file() and started.read_text().strip() == self.key(node)
        if not same_inputs:
            from slimship.train.artifacts import work_dir_for

            shutil.rmtree(work_dir_for(path), ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            started.write_text(self.key(node) + "\n")
        data, cfg = self.settings(node)
        if hasattr(cfg, "resume"):
            cfg.resume = same_inputs
        if node.stage == "distill":
            from slimship.compress.distill import distill

            distill(self.teacher_dir, path, data, cfg)
        elif node.stage == "prune":
            from slimship.compress.prune import prune

            prune(parent, path, data, cfg)
        elif node.stage == "vocab":
            from slimship.compress.vocab import trim_vocab

            trim_vocab(parent, path, data, cfg)
        elif node.stage == "export":
            from slimship.compress.export import export

            export(parent, path, data, cfg)
        elif node.stage == "quantize":
            from slimship.compress.quantize import quantize

            quantize(parent, path, data, cfg)
        # Beside the manifest (not among its files): the artifact's digests stay valid.
        (path / "search-key.json").write_text(json.dumps({"key": self.key(node)}) + "\n")
        return path

    def profile(self, node: Node) -> dict[str, Any]:
        """Parameters and MACs of the PyTorch model behind a node (cached beside its artifact)."""
        while not node.pytorch:
            node = node.parent
        path = self.path(node)
        cache = (self.out / "candidates" / "teacher.profile.json") if node.stage == "teacher" \
            else path / "profile.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        from transformers import AutoModelForSequenceClassification

        from slimship.compress.profile import model_profile

        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        manifest = artifact.load(path, verify=False)
        result = model_profile(model, manifest["max_length"])
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result) + "\n")
        return result

    def measure(self, node: Node, texts: list, labels: list) -> dict[str, Any]:
        """The main metric (and the headline ones) and speed of an ONNX candidate; kept in measurement.json so
        a rerun reuses it."""
        from slimship.compress.export import onnx_file_mb
        from slimship.compress.latency import speed
        from slimship.compress.evaluate import artifact_logits

        path = self.path(node)
        cache = path / "measurement.json"
        key = {"node": self.key(node), "rows": len(texts), "threads": self.cfg.threads, "latency_rows": self.cfg.latency_rows,
               "throughput_rows": self.cfg.throughput_rows, "fields": "metric"}
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return cached["result"]
        manifest = artifact.load(path, format="onnx")
        result = {**metric_fields(manifest, artifact_logits(path, texts), labels),
                  "file_mb": onnx_file_mb(path / "model.onnx"),
                  **speed(path, texts, threads=self.cfg.threads, latency_rows=self.cfg.latency_rows,
                          throughput_rows=self.cfg.throughput_rows, verify=False)}
        cache.write_text(json.dumps({"key": key, "result": result}, indent=2) + "\n")
        return result


def metric_fields(manifest: dict[str, Any], logits, labels: list) -> dict[str, Any]:
    """A model's main metric on these rows as "metric", beside the headline metrics by name (accuracy and
    macro-F1; micro-/macro-F1; Pearson and Spearman), with its own thresholds when it is multi-label."""
    task = task_of(manifest)
    metrics = task_metrics(task, logits, labels, manifest["labels"], thresholds_of(manifest))
    return {"metric": main_value(metrics, task), **headline(metrics)}


def row_for(search: Search, node: Node, measured: dict[str, Any] | None) -> dict[str, Any]:
    path = search.path(node)
    manifest = artifact.load(path, verify=False)
    row: dict[str, Any] = {"name": node.name, "stage": node.stage, "format": manifest["format"],
                           "parent": node.parent.name if node.parent else None, "path": str(path),
                           "options": node.options, **search.profile(node)}
    if measured:
        row.update(measured)
    else:
        from slimship.compress.profile import weights_size

        validation = (manifest.get("metrics") or {}).get("validation") or {}
        row.update(metric=validation.get(main_metric(task_of(manifest))), **(headline(validation) or {}),
                   file_mb=round(weights_size(path) / 1e6, 3))
    return row


def depth_of_checkpoint(model_dir: Path) -> int:
    """The number of blocks of a PyTorch artifact, from its config.json through its family (DistilBERT keeps
    it in n_layers, not num_hidden_layers)."""
    from slimship.train import families

    config = json.loads((Path(model_dir) / "config.json").read_text())
    return families.family_of(config, "compress").depth(config)


def grid_for_family(config: dict, grid: Grid) -> tuple[Grid, list[dict]]:
    """The grid without the entries this family cannot do, and those entries with the reason (for the report):
    ONNX Runtime's optimizer levels for families it does not know, pruning the family's config cannot describe."""
    from slimship.train import families

    family = families.family_of(config, "compress")
    skipped = []
    optimize = list(grid.optimize)
    if not family.ort_optimizer:
        optimize = [level for level in grid.optimize if level == "none"]
        skipped += [{"grid": f"optimize {level}", "reason": f"ONNX Runtime's transformer optimizer does not "
                     f"support {family.name}"} for level in grid.optimize if level != "none"]
        if not optimize and grid.optimize:
            optimize = ["none"]
    prune = []
    pruning = families.PRUNING.get(family.name)
    for entry in grid.prune:
        refused = [op for op, ratio in entry.items() if ratio and (
            pruning is None or family.attention is None or pruning.refusal(op))]
        # A config that ties heads x head size to the hidden size (DeBERTa) can only lose both by one fraction.
        untied = (pruning is not None and pruning.head_config == "tied"
                  and (entry.get("heads") or 0) != (entry.get("hidden") or 0))
        if refused:
            why = pruning.refusal(refused[0]) if pruning is not None and pruning.refusal(refused[0]) else \
                "structured pruning is not supported for this family"
            skipped.append({"grid": f"prune {entry}", "reason": f"{family.name}: {why}"})
        elif untied:
            skipped.append({"grid": f"prune {entry}", "reason": f"{family.name}: its config needs heads x head "
                            "size = hidden size, so heads and hidden must be pruned by the same fraction"})
        else:
            prune.append(entry)
    return replace(grid, optimize=optimize, prune=prune), skipped


def students_without_fusion(students: list[str]) -> frozenset[str]:
    """The grid's students whose family ONNX Runtime's optimizer does not know; one line for an unsupported one."""
    from slimship.train import families
    from slimship.train.models import model_config

    return frozenset(spec for spec in students
                     if not families.family_of(model_config(spec), "compress --students").ort_optimizer)


def compress(teacher_dir: str | Path, out: str | Path, data: DataConfig, cfg: CompressConfig) -> Path:
    """Search the grid, write the report and the chosen ONNX artifact at out/model; returns out."""
    from tqdm.auto import tqdm

    from slimship.compress.quantize import cpu_preset
    from slimship.core.runtime import default_threads
    from slimship.core.data import load_configured
    from slimship.core.report import write_report

    cfg.check()
    teacher_dir, out = Path(teacher_dir).absolute(), Path(out)
    teacher = artifact.load(teacher_dir, format="pytorch")
    check_unlabeled_fits(cfg.unlabeled, takes_pairs(teacher))   # before any student trains, not in a branch
    cfg.threads = cfg.threads or default_threads()
    t = cfg.train
    split = load_configured(data, teacher, splits=("validation",), sample_train=False).splits.get("validation")
    if split is None:
        raise UserError(f"{data.path}: compress needs validation rows to hold the budget to")
    split.take(slice(None, data.max_eval_rows))
    texts, labels = split.inputs, split.labels
    metric = main_metric(task_of(teacher))

    teacher_layers = depth_of_checkpoint(teacher_dir)
    grid, skipped = grid_for_family(json.loads((teacher_dir / "config.json").read_text()), cfg.grid)
    for entry in skipped:
        stage_log(f"skipped {entry['grid']}: {entry['reason']}")
    nodes = plan(teacher_layers, grid, students_without_fusion(grid.students))
    measured_nodes = candidates(nodes, cfg.grid)
    if not measured_nodes:
        raise UserError("the grid yields no ONNX candidate to measure (check layers, prune and include_teacher)")
    if not cfg.allow_batch_dependent and not any(node_batch_invariant(n) for n in measured_nodes):
        raise UserError(f"the grid's quantize modes ({', '.join(grid.quantize)}) give only batch-dependent "
                        "candidates (dynamic INT8: a text's label depends on its batch-mates), and only "
                        "batch-invariant ones are chosen by default: add static (or none) to the grid's quantize, "
                        "or pass --allow-batch-dependent (allow_batch_dependent: true)")
    if cfg.allow_batch_dependent and "dynamic" not in grid.quantize:
        stage_log("--allow-batch-dependent: the grid has no dynamic INT8 to allow; add dynamic to its quantize")
    out.mkdir(parents=True, exist_ok=True)
    search = Search(teacher_dir, out, data, cfg)
    stage_log(f"compress {teacher_dir}: {len(nodes) - 1} stages, {len(measured_nodes)} candidates, budget "
              f"{cfg.max_accuracy_drop:g} points of {metric_label(metric)}"
              + (f" and {cfg.max_model_mb:g} MB" if cfg.max_model_mb else "")
              + f", objective {cfg.objective}, {cfg.threads} threads")

    # The teacher's main metric on exactly these rows, through the same metric code.
    from slimship.compress.evaluate import artifact_logits

    teacher_cache = out / "candidates" / "teacher.metrics.json"
    teacher_key = {"teacher": artifact.manifest_digest(teacher_dir), "data": search.fingerprint(data),
                   "fields": "metric", "rows": len(texts)}
    cached = json.loads(teacher_cache.read_text()) if teacher_cache.is_file() else {}
    if cached.get("key") == teacher_key:
        teacher_metrics = cached["metrics"]
    else:
        teacher_metrics = metric_fields(teacher, artifact_logits(teacher_dir, texts), labels)
        teacher_cache.parent.mkdir(parents=True, exist_ok=True)
        teacher_cache.write_text(json.dumps({"key": teacher_key, "metrics": teacher_metrics}) + "\n")

    rows = [{"name": "teacher", "stage": "teacher", "format": "pytorch", "parent": None, "path": str(teacher_dir),
             "options": {}, **search.profile(nodes[0]), **teacher_metrics, "delta_points": 0.0,
             "file_mb": round((teacher_dir / "model.safetensors").stat().st_size / 1e6, 3)}]
    bar = tqdm(nodes[1:], desc="compress", unit="stage", disable=t.quiet, dynamic_ncols=True)
    failed: dict[str, str] = {}
    for i, node in enumerate(bar, start=1):
        bar.set_postfix_str(node.name)
        if node.parent is not None and node.parent.name in failed:
            failed[node.name] = f"not built: {node.parent.name} failed"
            rows.append({"name": node.name, "stage": node.stage, "parent": node.parent.name, "options": node.options,
                         "failed": failed[node.name]})
            continue
        done = search.finished(node)
        try:
            search.build(node)
            measured = search.measure(node, texts, labels) if node in measured_nodes else None
        except Exception as e:  # one broken branch must not throw away a long search; the report says why
            failed[node.name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            stage_log(f"[{i}/{len(nodes) - 1}] {node.name}: FAILED ({failed[node.name]}); its branch is skipped")
            rows.append({"name": node.name, "stage": node.stage, "parent": node.parent.name if node.parent else None,
                         "options": node.options, "failed": failed[node.name]})
            continue
        row = row_for(search, node, measured)
        if measured:
            row["batch_invariant"] = node_batch_invariant(node)
        row["delta_points"] = None if row["metric"] is None else \
            round((row["metric"] - teacher_metrics["metric"]) * 100, 3)
        rows.append(row)
        speed_note = (f", p50 {row['latency_ms_p50']:.2f} ms, {row['throughput_rows_s']:.0f} rows/s @32"
                      if measured else "")
        acc_note = "" if row["metric"] is None else f"{metric_label(metric)} {row['metric'] * 100:.2f} " \
                                                     f"({row['delta_points']:+.2f} pt)"
        stage_log(f"[{i}/{len(nodes) - 1}] {node.name}{' (reused)' if done else ''}: {acc_note}{speed_note}")
    bar.close()

    # The budget counts from the best model the run has: an underfit teacher that its students beat is no
    # yardstick (the chosen model could otherwise be points below a candidate already in hand).
    reference = best_reference(rows)
    for row in rows:
        if row.get("metric") is not None and not row.get("failed"):
            row["delta_points"] = round((row["metric"] - reference["metric"]) * 100, 3)
    chosen = choose(rows, cfg)
    report = {
        "kind": "compress", "teacher": str(teacher_dir), "data": data.path, "validation_rows": len(texts),
        "metric": metric, "teacher_metric": teacher_metrics["metric"], "reference": reference,
        **({"teacher_accuracy": teacher_metrics["accuracy"]} if "accuracy" in teacher_metrics else {}),
        "budget": {"max_accuracy_drop_points": cfg.max_accuracy_drop, "objective": cfg.objective,
                   "speed_tie": cfg.speed_tie,
                   **({"max_model_mb": cfg.max_model_mb} if cfg.max_model_mb else {}),
                   "allow_batch_dependent": cfg.allow_batch_dependent},
        "machine": {"threads": cfg.threads, "preset": cpu_preset()},
        "grid": asdict(cfg.grid), "skipped": skipped, "rows": rows, "chosen": chosen["name"] if chosen else None,
    }
    if chosen is not None:
        report["chosen_batch_invariant"] = chosen.get("batch_invariant", True)
        if chosen.get("tie_note"):
            report["tie_note"] = chosen["tie_note"]
    if chosen is None:
        if cfg.max_model_mb:
            report["message"] = (f"no candidate is within {cfg.max_accuracy_drop:g} {metric_label(metric)} points of "
                                 f"the {reference_words(reference)} and at most {cfg.max_model_mb:g} MB; "
                                 f"{best_accuracy_note(rows, cfg.max_model_mb)}. Loosen --max-accuracy-drop or "
                                 "--max-model-mb, or widen the grid" + smaller_hint(cfg.grid) + ".")
        else:
            report["message"] = (f"no candidate is within {cfg.max_accuracy_drop:g} {metric_label(metric)} points of "
                                 f"the {reference_words(reference)}; the best was {best_accuracy_note(rows)}. "
                                 "Loosen --max-accuracy-drop or widen the grid.")
        report["message"] += batch_dependent_note(rows, cfg)
        shutil.rmtree(out / "model", ignore_errors=True)   # a model from an earlier run would mislead
        write_report(out, report)
        raise BudgetNotMet(report["message"] + f" Report: {out / 'report.md'}")

    chosen_dir = Path(chosen["path"])
    source = artifact.load(chosen_dir, format="onnx")
    with artifact.create(out / "model", "compress", format="onnx", parent=chosen_dir,
                         config={"teacher": str(teacher_dir), **data.options(), **report["budget"]}) as art:
        for name in source["files"]:
            shutil.copy(chosen_dir / name, art.dir / name)
        for key in ("parity", "quantization", "optimize", "file_mb", "tokenizer"):
            if key in source:
                art.manifest[key] = source[key]
        art.manifest.update(labels=source["labels"], **task_fields(source), max_length=source["max_length"],
                            metrics=source.get("metrics", {}), chosen=chosen["name"],
                            chain=chain_of(nodes, chosen["name"]), parameters=chosen.get("parameters"),
                            macs=chosen.get("macs"), teacher_metric={metric: teacher_metrics["metric"]},
                            **({"teacher_accuracy": teacher_metrics["accuracy"]} if "accuracy" in teacher_metrics
                               else {}),
                            reference={"name": reference["name"], metric: reference["metric"]},
                            batch_invariant=chosen.get("batch_invariant", True),
                            speed={k: chosen[k] for k in ("latency_ms_p50", "latency_ms_p95",
                                                          "throughput_rows_s", "threads")})
    report["model"] = str((out / "model").absolute())
    report["test"] = test_check(teacher_dir, chosen, reference, rows, data, teacher["labels"], cfg)
    write_report(out, report)
    if report["test"] and report["test"]["misses_budget"]:
        stage_log(f"WARNING: {report['test']['note']}")
    stage_log(f"chosen: {chosen['name']} ({chosen['delta_points']:+.2f} pt, {chosen['throughput_rows_s']:.0f} "
              f"rows/s, p50 {chosen['latency_ms_p50']:.2f} ms, {chosen['file_mb']:.1f} MB) -> {out / 'model'}")
    return out


def choose(rows: list[dict[str, Any]], cfg: CompressConfig) -> dict[str, Any] | None:
    """Mark each measured row within the budget (accuracy, and file size when one is set) and on the Pareto
    front; return the fastest in budget."""
    measured = [r for r in rows if r.get("throughput_rows_s") is not None]
    for r in measured:
        r["within_budget"] = -r["delta_points"] <= cfg.max_accuracy_drop + 1e-9 and (
            cfg.max_model_mb is None or r["file_mb"] <= cfg.max_model_mb)
        r["cost"] = cost(r, cfg.objective)
    for r in measured:
        r["pareto"] = not any(metric_of(o) >= metric_of(r) and o["cost"] <= r["cost"]
                              and (metric_of(o) > metric_of(r) or o["cost"] < r["cost"]) for o in measured)
    for r in measured:
        r.pop("excluded", None)
        if not r.get("batch_invariant", True) and not cfg.allow_batch_dependent:
            r["excluded"] = "batch-dependent"    # in budget or not, never chosen without --allow-batch-dependent
    inside = [r for r in measured if r["within_budget"] and not r.get("excluded")]
    if not inside:
        best = None
    else:
        # Speeds a few percent apart are within this machine's timing noise (batch-32 passes spread by about
        # 10%), while file sizes differ by 3x between an FP32 export and its INT8 twin: among the candidates
        # as fast as the fastest up to speed_tie, the smallest file wins.
        fastest = min(inside, key=lambda r: (r["cost"], -metric_of(r)))
        ties = [r for r in inside if r["cost"] <= fastest["cost"] * (1 + cfg.speed_tie)]
        best = min(ties, key=lambda r: (r["file_mb"], r["cost"], -metric_of(r)))
        if best is not fastest:
            best["tie_note"] = (f"{fastest['name']} was {best['cost'] / fastest['cost'] - 1:.0%} "
                                f"faster, within the {cfg.speed_tie:.0%} speed tie, and {best['name']} is the smaller "
                                f"file ({best['file_mb']:.1f} MB against {fastest['file_mb']:.1f})")
    for r in rows:
        r["chosen"] = r is best
    return best


def node_batch_invariant(node: Node) -> bool:
    """An FP32 export answers each text on its own; a quantized one does unless its mode is dynamic."""
    from slimship.compress.quantize import batch_invariant

    return batch_invariant(node.options["mode"]) if node.stage == "quantize" else True


def best_reference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best on the main metric of the teacher and the measured candidates (the teacher wins ties): the
    budget's base. For classification it also carries the accuracy under its own name."""
    teacher = rows[0]
    measured = [r for r in rows if r.get("throughput_rows_s") is not None and metric_of(r) is not None]
    best = max([teacher, *measured], key=metric_of)   # max keeps the first of equals
    reference = {"name": best["name"], "metric": metric_of(best), "is_teacher": best is teacher,
                 "teacher_metric": metric_of(teacher)}
    if "accuracy" in best:
        reference.update(accuracy=best["accuracy"], teacher_accuracy=teacher["accuracy"])
    reference["why"] = ("the teacher" if best is teacher else
                        f"candidate {best['name']}, {(metric_of(best) - metric_of(teacher)) * 100:.2f} points "
                        "above the teacher")
    return reference


def reference_words(reference: dict[str, Any]) -> str:
    if reference["is_teacher"]:
        return f"teacher ({reference['metric'] * 100:.2f}%)"
    return (f"best candidate {reference['name']} ({reference['metric'] * 100:.2f}%; the teacher had "
            f"{reference['teacher_metric'] * 100:.2f}%)")


def batch_dependent_note(rows: list[dict[str, Any]], cfg: CompressConfig) -> str:
    """When only batch-dependent candidates met the budget, say so and how to let them in."""
    kept_out = [r for r in rows if r.get("excluded") == "batch-dependent" and r.get("within_budget")]
    if not kept_out:
        return ""
    best = min(kept_out, key=lambda r: r["cost"])
    return (f" {len(kept_out)} batch-dependent candidate(s) met it (fastest {best['name']}, "
            f"{best['delta_points']:+.2f} pt); --allow-batch-dependent lets them be chosen, at the price of labels "
            "that depend on batch-mates.")


def test_check(teacher_dir: Path, chosen: dict[str, Any], reference: dict[str, Any], rows: list[dict[str, Any]],
               data: DataConfig, labels: list[str], cfg: CompressConfig) -> dict[str, Any] | None:
    """With a test split: the teacher's, the reference's and the chosen model's main metric on test, and
    whether the chosen model keeps the budget there too. Selection stays on validation; this is the honest
    check."""
    from slimship.compress.evaluate import artifact_logits
    from slimship.core.data import load_configured

    teacher = {**artifact.load(teacher_dir, verify=False), "labels": labels}
    split = load_configured(data, teacher, splits=("test",), sample_train=False).splits.get("test")
    if split is None or not split.texts:
        return None
    split.take(slice(None, data.max_eval_rows))
    texts, truth = split.inputs, split.labels
    paths = {"teacher": teacher_dir, chosen["name"]: Path(chosen["path"])}
    if not reference["is_teacher"]:
        paths[reference["name"]] = Path(next(r["path"] for r in rows if r["name"] == reference["name"]))
    value = {name: metric_fields(artifact.load(path, verify=False), artifact_logits(path, texts), truth)["metric"]
             for name, path in paths.items()}
    drop = round((value[reference["name"]] - value[chosen["name"]]) * 100, 3)
    result = {"rows": len(texts), "teacher_metric": value["teacher"],
              "reference_metric": value[reference["name"]], "chosen_metric": value[chosen["name"]],
              "drop_points": drop, "misses_budget": drop > cfg.max_accuracy_drop + 1e-9}
    if task_of(teacher) == "classification":
        result.update(teacher_accuracy=value["teacher"], reference_accuracy=value[reference["name"]],
                      chosen_accuracy=value[chosen["name"]])
    result["note"] = (f"on the test split ({len(texts)} rows) the chosen model is {drop:.2f} points below "
                      f"{'the teacher' if reference['is_teacher'] else reference['name']}, over the "
                      f"{cfg.max_accuracy_drop:g}-point budget it met on validation" if result["misses_budget"]
                      else f"on the test split ({len(texts)} rows) the chosen model is {-drop:+.2f} points against "
                           f"the reference: within the {cfg.max_accuracy_drop:g}-point budget")
    return result


def cost(row: dict[str, Any], objective: str) -> float:
    """Milliseconds per row: batch-1 p50 latency, or the batch-32 time per row."""
    if objective == "latency":
        return float(row["latency_ms_p50"])
    return 1000.0 / float(row["throughput_rows_s"])


def best_accuracy_note(rows: list[dict[str, Any]], max_model_mb: float | None = None) -> str:
    measured = [r for r in rows if r.get("throughput_rows_s") is not None]
    if not measured:
        return "nothing (no candidate was measured)"
    best = max(measured, key=metric_of)
    note = f"{best['name']} at {metric_of(best) * 100:.2f}% ({best['delta_points']:+.2f} pt)"
    if max_model_mb is None:
        return note
    small = [r for r in measured if r["file_mb"] <= max_model_mb]
    best_small = max(small, key=metric_of) if small else None
    return (f"the most accurate was {note}, {best['file_mb']:.1f} MB; within {max_model_mb:g} MB "
            + (f"{best_small['name']} at {best_small['delta_points']:+.2f} pt" if best_small else "none was"))


def smaller_hint(grid: Grid) -> str:
    """The grid axes that make files smaller and are not tried yet, as a hint for a size budget nothing met."""
    missing = [axis for axis, present in (("embedding_bits: [8, 4]", 4 in grid.embedding_bits),
                                          ("vocab: [full, train]", "train" in grid.vocab)) if not present]
    return f" ({', '.join(missing)})" if missing else " (more pruning, fewer layers)"


def chain_of(nodes: list[Node], name: str) -> list[dict[str, Any]]:
    node = next(n for n in nodes if n.name == name)
    chain = []
    while node is not None:
        chain.append({"stage": node.stage, "name": node.name, "options": node.options})
        node = node.parent
    return chain[::-1]
