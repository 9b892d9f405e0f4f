"""The prune stage: structured pruning of attention heads, FFN channels and the hidden size, then recovery.

    prune("runs/student", "runs/pruned", DataConfig("data/"), PruneConfig(heads=1/3, ffn=0.5)) -> Path("runs/pruned")

torch-pruning's dependency graph finds everything that must shrink together with a channel (query/key/value
with the attention output, the residual stream through every LayerNorm, the pooler, ...). We pick the channels
ourselves, uniformly per layer, so the result is still an ordinary BERT that a plain ``from_pretrained`` rebuilds:

- heads: every layer loses the same number of heads, chosen per layer by importance. The config keeps one head
  "slot" per ``head_dim`` of the hidden size and lists the removed slots in ``pruned_heads``, which transformers
  applies when it builds the model, so heads and hidden size can be pruned independently.
- FFN: every layer loses the same number of intermediate channels.
- hidden: the residual stream (embeddings, every layer's outputs and LayerNorms, the pooler) loses whole
  multiples of ``head_dim`` channels, so ``hidden_size / head_dim`` stays an integer.

Importance is magnitude (L2 of the weights touching a channel) or first-order Taylor (|w * dL/dw|, gradients
from a few training batches). With ``steps`` > 1 the ratios are reached in K equal steps, with recovery
fine-tuning after each (knowledge distillation from ``cfg.teacher`` when given, else plain fine-tuning).

Resumable: each step's pruned and recovered models are saved in the work dir; ``resume`` continues from there.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.artifact import stage_log
from slimship.train.families import Pruning, find_module, prune_blocks, pruning_of
from slimship.compress.config import IMPORTANCE, PruneConfig  # noqa: F401 (the stage's options)
from slimship.core.config import DataConfig
from slimship.core.metrics import headline, shown


# --- the shape of an encoder, read through its family (slimship/train/families.py) ----------------------------


def encoder_layers(model) -> list:
    """The encoder blocks of a model whose family can be pruned, or a one-line UserError naming the family."""
    pruning_of(model)
    return prune_blocks(model)


def _hidden_root(model, pruning: Pruning):
    """The module whose output starts the residual stream (ELECTRA/ALBERT: the projection after the narrower
    embeddings)."""
    for path in pruning.hidden_root:
        module = find_module(model, path)
        if module is not None:
            return module
    raise RuntimeError(f"none of {pruning.hidden_root} found in {type(model).__name__}")


def _width(module) -> int:
    return module.embedding_dim if hasattr(module, "embedding_dim") else module.out_features


def _inputs(projection) -> int:
    """Input width of a Linear, or of a transformers Conv1D (weight [in, out], no in_features)."""
    return projection.in_features if hasattr(projection, "in_features") else projection.weight.shape[0]


@dataclass
class Shape:
    """The uniform per-layer shape of a (possibly already pruned) encoder."""

    hidden: int
    heads: int          # heads actually present per layer
    head_dim: int
    ffn: int

    @classmethod
    def of(cls, model) -> "Shape":
        family, pruning = pruning_of(model)
        first = prune_blocks(model)[0]
        attention, ffn = family.attention(first), family.ffn(first)
        count, size, _ = pruning.head_attrs
        head_dim = getattr(attention.module, size)
        # Grouped-query attention keeps no head count on the module: the query projection's width tells it.
        heads = attention.query.out_features // head_dim if pruning.head_config == "gqa" \
            else getattr(attention.module, count)
        return cls(hidden=_width(_hidden_root(model, pruning)), heads=heads, head_dim=head_dim,
                   ffn=_inputs(ffn.down))


@dataclass
class Removal:
    """How much one pruning step removes: heads and FFN channels per layer, hidden channels in all."""

    heads: int = 0
    ffn: int = 0
    hidden: int = 0


def refuse_unsupported(model, cfg) -> None:
    """One line naming the family and the operation, for a ratio the family's config cannot describe."""
    family, pruning = pruning_of(model)
    for operation in ("heads", "ffn", "hidden"):
        why = pruning.refusal(operation)
        if getattr(cfg, operation, 0) and why:
            raise UserError(f"{family.name}: {operation} pruning is not supported: {why}")


def plan(shape: Shape, cfg: PruneConfig, model=None) -> Removal:
    """Turn ratios into whole heads / channels, refusing ratios the result could not be built from (with
    ``model``, also what its family's config cannot describe)."""
    name, pruning = "bert", Pruning()
    if model is not None:
        refuse_unsupported(model, cfg)
        family, pruning = pruning_of(model)
        name = family.name
    heads = round(cfg.heads * shape.heads)
    ffn = round(cfg.ffn * shape.ffn)
    slots = shape.hidden // shape.head_dim
    hidden_slots = round(cfg.hidden * slots)
    kv_heads = getattr(getattr(model, "config", None), "num_key_value_heads", None) or shape.heads
    if pruning.head_config == "gqa" and heads % kv_heads:
        raise UserError(f"{name}: --heads {cfg.heads:g} removes {heads} of {shape.heads} query heads, but with "
                        f"grouped-query attention each of the {kv_heads} KV groups must lose as many; remove a "
                        f"multiple of {kv_heads} heads (--heads {kv_heads / shape.heads:.3g} is the smallest step)")
    if cfg.heads and heads == 0:
        raise UserError(f"--heads {cfg.heads:g} removes no head of {shape.heads} (the smallest step is "
                        f"{1 / shape.heads:.3g})")
    if heads >= shape.heads:
        raise UserError(f"--heads {cfg.heads:g} would leave no attention head of {shape.heads} per layer")
    if cfg.ffn and ffn == 0:
        raise UserError(f"--ffn {cfg.ffn:g} removes no channel of {shape.ffn}")
    if ffn >= shape.ffn:
        raise UserError(f"--ffn {cfg.ffn:g} would leave no FFN channel of {shape.ffn} per layer")
    if cfg.hidden and hidden_slots == 0:
        raise UserError(f"--hidden {cfg.hidden:g} removes nothing: the hidden size {shape.hidden} is pruned in "
                        f"whole multiples of the head size {shape.head_dim} (the smallest step is {1 / slots:.3g})")
    if hidden_slots >= slots:
        raise UserError(f"--hidden {cfg.hidden:g} would leave no hidden channel of {shape.hidden}")
    kept_slots, kept_heads = slots - hidden_slots, shape.heads - heads
    kept_hidden = kept_slots * shape.head_dim
    if pruning.head_config == "pruned_heads" and kept_heads > kept_slots:
        raise UserError(
            f"--hidden {cfg.hidden:g} leaves hidden size {kept_hidden}, room for {kept_slots} heads "
            f"of size {shape.head_dim}, but {kept_heads} heads are kept: a {name} config cannot describe "
            f"that. Prune at least {shape.heads - kept_slots} heads "
            f"(--heads {(shape.heads - kept_slots) / shape.heads:.3g}) or less hidden size")
    if pruning.head_config == "tied" and (heads or hidden_slots) and kept_heads * shape.head_dim != kept_hidden:
        raise UserError(f"{name}: its config needs heads x head size = hidden size, but --heads {cfg.heads:g} "
                        f"--hidden {cfg.hidden:g} leave {kept_heads} heads of {shape.head_dim} and hidden size "
                        f"{kept_hidden}; prune heads and hidden size by the same fraction")
    embedding_size = getattr(getattr(model, "config", None), "embedding_size", None)
    if pruning.optional_projection and hidden_slots and embedding_size == kept_hidden != shape.hidden:
        raise UserError(f"{name}: --hidden {cfg.hidden:g} leaves the hidden size equal to the embedding size "
                        f"{embedding_size}, where its config drops the projection between them; prune more or "
                        f"less hidden size")
    return Removal(heads=heads, ffn=ffn, hidden=hidden_slots * shape.head_dim)


def step_removals(total: Removal, steps: int, head_dim: int, head_unit: int = 1) -> list[Removal]:
    """Split a removal into K steps whose running totals follow k/K of the target (hidden in head_dim units,
    heads in ``head_unit``s: one per KV group under grouped-query attention)."""
    def share(amount: int, k: int, unit: int = 1) -> int:
        units = amount // unit
        return (math.floor(units * k / steps + 0.5) - math.floor(units * (k - 1) / steps + 0.5)) * unit

    return [Removal(heads=share(total.heads, k, head_unit), ffn=share(total.ffn, k),
                    hidden=share(total.hidden, k, head_dim))
            for k in range(1, steps + 1)]


# --- one pruning step with torch-pruning ---------------------------------------------------------------------


def _importance(kind: str):
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance() if kind == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)


def accumulate_gradients(model, batches: list[dict]) -> None:
    """Gradients of the classification loss summed over a few batches (for Taylor importance); dropout off."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for batch in batches:
        model(**batch).loss.backward()


def _lowest(scores, count: int) -> list[int]:
    import torch

    return sorted(torch.argsort(scores.float(), stable=True)[:count].tolist()) if count else []


def _gated_channel_scores(up, down, kind: str):
    """Per-channel importance of a gated FFN (up emits [input | gate]): the magnitude (or |w * grad|) of the
    channel's two up rows and its down column, summed as torch-pruning's group importance sums a group."""
    import torch

    width = down.in_features

    def score(weight, dim):
        value = weight.detach() * weight.grad if kind == "taylor" and weight.grad is not None else weight.detach()
        value = value.abs() if kind == "taylor" else value.pow(2)
        return value.sum(dim=dim)

    with torch.no_grad():
        up_rows = score(up.weight, 1)
        total = up_rows[:width] + up_rows[width:] + score(down.weight, 0)
        if up.bias is not None:
            total += score(up.bias.view(-1, 1), 1)[:width] + score(up.bias.view(-1, 1), 1)[width:]
    return total


def _prune_gated_ffn(up, down, drop: list[int]) -> None:
    """Remove channels ``drop`` of a gated FFN in place: both halves of ``up``'s rows and ``down``'s columns.
    torch-pruning does not follow the chunk into input and gate, so this one is cut by hand."""
    import torch

    width = down.in_features
    keep = torch.tensor([c for c in range(width) if c not in set(drop)], dtype=torch.long)
    rows = torch.cat([keep, keep + width])
    with torch.no_grad():
        up.weight = torch.nn.Parameter(up.weight[rows].clone())
        if up.bias is not None:
            up.bias = torch.nn.Parameter(up.bias[rows].clone())
        down.weight = torch.nn.Parameter(down.weight[:, keep].clone())
    up.out_features, down.in_features = len(rows), len(keep)


def prune_step(model, removal: Removal, importance: str, batches: list[dict], max_length: int) -> None:
    """Remove ``removal`` from ``model`` in place, the least important channels first; then fix its config."""
    import torch
    import torch_pruning as tp

    from slimship.compress.profile import example_inputs

    family, pruning = pruning_of(model)
    shape = Shape.of(model)
    if importance == "taylor":
        accumulate_gradients(model, batches)
    if pruning.head_config == "gqa":
        _prune_decoder_step(model, removal, importance, shape)
        return
    if pruning.conv1d:
        _prune_conv1d_step(model, removal, importance, shape)
        return
    gated = family.ffn(prune_blocks(model)[0]).gated
    # Gated FFNs by hand (torch-pruning's trace does not split the up projection's rows into input and gate
    # halves), before the graph is traced, so that it sees the cut modules.
    if removal.ffn and gated:
        for block in prune_blocks(model):
            parts = family.ffn(block)
            _prune_gated_ffn(parts.up, parts.down,
                             _lowest(_gated_channel_scores(parts.up, parts.down, importance), removal.ffn))
    scorer = _importance(importance)
    model.eval()
    graph = None
    if removal.heads or removal.hidden or (removal.ffn and not gated):
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs(model, min(16, max_length)),
            output_transform=lambda out: out.logits.sum())

    def scores(module, prune_fn, channels: int):
        group = graph.get_pruning_group(module, prune_fn, idxs=list(range(channels)))
        with torch.no_grad():
            return scorer(group)

    def remove(module, prune_fn, idxs: list[int]) -> None:
        group = graph.get_pruning_group(module, prune_fn, idxs=idxs)
        if not graph.check_pruning_group(group):
            raise RuntimeError(f"torch-pruning refused to prune {idxs[:5]}... of {module}")
        group.prune()

    if removal.hidden:
        root = _hidden_root(model, pruning)
        root_fn = tp.prune_embedding_out_channels if hasattr(root, "embedding_dim") else tp.prune_linear_out_channels
        dropped = _lowest(scores(root, root_fn, shape.hidden), removal.hidden)
        remove(root, root_fn, dropped)
        # Tables the trace did not see lose the same residual channels.
        for path in pruning.hidden_tables:
            table = find_module(model, path)
            if table is not None and table.embedding_dim == shape.hidden:
                _drop_columns(table, dropped)
        # Hidden-wide outputs outside the residual stream (pooler, head dense) feed only the classifier; the config
        # has one hidden size for them too, so they shrink as much.
        for path in pruning.side_outputs:
            side = find_module(model, path)
            if isinstance(side, torch.nn.Linear) and side.out_features == shape.hidden:
                remove(side, tp.prune_linear_out_channels,
                       _lowest(scores(side, tp.prune_linear_out_channels, side.out_features), removal.hidden))
    for block in prune_blocks(model):
        if removal.heads:
            out = family.attention(block).output
            per_head = scores(out, tp.prune_linear_in_channels, out.in_features).view(shape.heads, -1).sum(1)
            idxs = [h * shape.head_dim + d for h in _lowest(per_head, removal.heads) for d in range(shape.head_dim)]
            remove(out, tp.prune_linear_in_channels, idxs)
        if removal.ffn and not gated:
            up = family.ffn(block).up
            remove(up, tp.prune_linear_out_channels,
                   _lowest(scores(up, tp.prune_linear_out_channels, shape.ffn), removal.ffn))
    model.zero_grad(set_to_none=True)
    update_config(model, shape.head_dim)


def _score(weight, dim: int, kind: str):
    """Importance summed over ``dim``: |w * dL/dw| (taylor, where gradients exist) or w^2 (magnitude)."""
    value = weight.detach() * weight.grad if kind == "taylor" and weight.grad is not None else weight.detach()
    return (value.abs() if kind == "taylor" else value.pow(2)).sum(dim=dim)


def _keep_rows(linear, keep) -> None:
    import torch

    with torch.no_grad():
        linear.weight = torch.nn.Parameter(linear.weight[keep].clone())
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias[keep].clone())
    linear.out_features = len(keep)


def _keep_columns(linear, keep) -> None:
    import torch

    with torch.no_grad():
        linear.weight = torch.nn.Parameter(linear.weight[:, keep].clone())
    linear.in_features = len(keep)


def _prune_decoder_step(model, removal: Removal, importance: str, shape: Shape) -> None:
    """Llama/Qwen blocks, cut by hand: both are plain Linears whose coupling is known exactly.

    Heads: grouped-query attention repeats KV head g for query heads g*G..(g+1)*G-1, so each of the KV groups
    loses the same number of its query heads (their q_proj rows and o_proj columns); the KV heads stay and G
    shrinks. FFN (SwiGLU, down(act(gate(x)) * up(x))): a channel is a gate row, an up row and a down column,
    ranked by their importance summed and cut together."""
    import torch

    family, _ = pruning_of(model)
    kv_heads = int(model.config.num_key_value_heads)
    if removal.heads % kv_heads:
        raise RuntimeError(f"{removal.heads} query heads cannot be taken evenly from {kv_heads} KV groups")
    per_group = shape.heads // kv_heads
    drop_per_group = removal.heads // kv_heads
    for block in prune_blocks(model):
        if removal.heads:
            parts = family.attention(block)
            with torch.no_grad():
                per_head = (_score(parts.query.weight, 1, importance).view(shape.heads, -1).sum(1)
                            + _score(parts.output.weight, 0, importance).view(shape.heads, -1).sum(1))
                if parts.query.bias is not None:
                    per_head += _score(parts.query.bias.view(-1, 1), 1, importance).view(shape.heads, -1).sum(1)
            kept_heads = []
            for g in range(kv_heads):
                group = list(range(g * per_group, (g + 1) * per_group))
                dropped = {group[i] for i in _lowest(per_head[group], drop_per_group)}
                kept_heads += [h for h in group if h not in dropped]
            keep = torch.tensor([h * shape.head_dim + d for h in kept_heads for d in range(shape.head_dim)])
            _keep_rows(parts.query, keep)
            _keep_columns(parts.output, keep)
            parts.module.num_key_value_groups = per_group - drop_per_group
        if removal.ffn:
            parts = family.ffn(block)
            with torch.no_grad():
                scores = (_score(parts.gate.weight, 1, importance) + _score(parts.up.weight, 1, importance)
                          + _score(parts.down.weight, 0, importance))
            dropped = set(_lowest(scores, removal.ffn))
            keep = torch.tensor([c for c in range(shape.ffn) if c not in dropped])
            _keep_rows(parts.gate, keep)
            _keep_rows(parts.up, keep)
            _keep_columns(parts.down, keep)
    model.zero_grad(set_to_none=True)
    config = model.config
    config.head_dim = shape.head_dim       # no longer hidden_size / num_attention_heads
    config.num_attention_heads = shape.heads - removal.heads
    config.intermediate_size = shape.ffn - removal.ffn


def _keep_conv1d(layer, keep, dim: int) -> None:
    """Keep only ``keep`` along ``dim`` of a transformers Conv1D in place (weight [in, out]: dim 1 = outputs,
    whose bias goes too; dim 0 = inputs)."""
    import torch

    with torch.no_grad():
        layer.weight = torch.nn.Parameter(layer.weight.index_select(dim, keep).clone())
        if dim == 1:
            layer.bias = torch.nn.Parameter(layer.bias[keep].clone())
    layer.nf, layer.nx = layer.weight.shape[1], layer.weight.shape[0]


def _prune_conv1d_step(model, removal: Removal, importance: str, shape: Shape) -> None:
    """GPT-2 blocks, cut by hand: their projections are Conv1D (weight [in, out]) with q, k and v fused.

    Heads: a head is its columns in each of c_attn's q, k and v thirds and its rows of c_proj; the attention's
    own prune_heads cuts them. The config keeps n_head slots and lists the last ones as pruned, so a fresh
    GPT-2 built from it has the kept heads' shapes, in their order. FFN: a channel is a c_fc column and a
    c_proj row."""
    import torch

    family, _ = pruning_of(model)
    config = model.config
    slots = int(getattr(config, family.heads_key))
    kept_heads = shape.heads - removal.heads
    for block in prune_blocks(model):
        if removal.heads:
            parts = family.attention(block)
            with torch.no_grad():
                per_head = (_score(parts.qkv.weight, 0, importance).view(3, shape.heads, -1).sum((0, 2))
                            + _score(parts.output.weight, 1, importance).view(shape.heads, -1).sum(1))
            present = sorted(set(range(slots)) - set(parts.module.pruned_heads))   # slot of each current head
            parts.module.prune_heads({present[h] for h in _lowest(per_head, removal.heads)})
            parts.module.pruned_heads = set(range(kept_heads, slots))
        if removal.ffn:
            parts = family.ffn(block)
            with torch.no_grad():
                scores = _score(parts.up.weight, 0, importance) + _score(parts.down.weight, 1, importance)
            dropped = set(_lowest(scores, removal.ffn))
            keep = torch.tensor([c for c in range(shape.ffn) if c not in dropped])
            _keep_conv1d(parts.up, keep, dim=1)
            _keep_conv1d(parts.down, keep, dim=0)
    model.zero_grad(set_to_none=True)
    blocks = len(prune_blocks(model))
    config.pruned_heads = {i: list(range(kept_heads, slots)) for i in range(blocks)} if kept_heads < slots else {}
    setattr(config, family.intermediate_key, shape.ffn - removal.ffn)


def _drop_columns(table, dropped: list[int]) -> None:
    import torch

    keep = torch.tensor([c for c in range(table.embedding_dim) if c not in set(dropped)], dtype=torch.long)
    with torch.no_grad():
        table.weight = torch.nn.Parameter(table.weight[:, keep].clone())
    table.embedding_dim = len(keep)


def update_config(model, head_dim: int) -> None:
    """Make the attention modules and the config describe the pruned shapes, so from_pretrained rebuilds them."""
    family, pruning = pruning_of(model)
    blocks = prune_blocks(model)
    config = model.config
    hidden = _width(_hidden_root(model, pruning))
    count, size, total = pruning.head_attrs
    for block in blocks:
        attention = family.attention(block)
        width = attention.output.in_features
        setattr(attention.module, count, width // head_dim)
        setattr(attention.module, size, head_dim)
        setattr(attention.module, total, width)
    heads = {getattr(family.attention(block).module, count) for block in blocks}
    ffn = {family.ffn(block).down.in_features for block in blocks}
    if len(heads) != 1 or len(ffn) != 1:
        raise RuntimeError(f"pruning left non-uniform layers (heads {heads}, FFN {ffn})")
    kept = heads.pop()
    setattr(config, family.hidden_key, hidden)
    setattr(config, family.intermediate_key, ffn.pop())
    if hasattr(config, "pooler_hidden_size"):   # DeBERTa's pooler, a side output cut with the hidden size
        config.pooler_hidden_size = hidden
    if pruning.head_config == "tied":
        setattr(config, family.heads_key, kept)
    else:
        slots = hidden // head_dim
        setattr(config, family.heads_key, slots)
        config.pruned_heads = {i: list(range(kept, slots)) for i in range(len(blocks))} if kept < slots else {}


def reload_difference(model, inputs: dict) -> float:
    """Save, reload with plain from_pretrained, and return the largest |logit difference| (should be ~0)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model.eval()
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        model.save_pretrained(tmp, safe_serialization=True)
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp).eval()
        return float((model(**inputs).logits - reloaded(**inputs).logits).abs().max())


# --- the stage -------------------------------------------------------------------------------------------------


def importance_batches(tokenizer, texts: list[str], labels: list[int], cfg: PruneConfig) -> list[dict]:
    """A few shuffled training batches (padded, with labels) for the Taylor importance's gradients."""
    import random

    import torch

    from slimship.train.artifacts import tokenize

    order = list(range(len(texts)))
    random.Random(cfg.seed).shuffle(order)
    order = order[:cfg.importance_batches * cfg.batch_size]
    batches = []
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        batch = tokenize(tokenizer, [texts[i] for i in idx], cfg.max_length, padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([labels[i] for i in idx])
        batches.append(dict(batch))
    return batches


def kd_recovery_options(source: dict, model, teacher, cfg: PruneConfig) -> dict[str, Any]:
    """The DistillTrainer's options for recovery from ``teacher``: the logit loss, and with ``hidden_weight`` the
    hidden states matched layer by layer (a distilled student's layers to the teacher layers it was copied from)."""
    from slimship.compress.distill import check_mixup, hidden_layer_map
    from slimship.train import families

    check_mixup(cfg, families.family_of(teacher.config, "prune"))
    check_mixup(cfg, families.family_of(model.config, "prune"))
    options = dict(teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha, hidden_weight=0.0,
                   attention_weight=0.0, layer_map=None, mixup_weight=cfg.mixup_weight)
    if not cfg.layer_losses:
        return options
    if cfg.hidden_weight > 0 and (cfg.hidden > 0 or model.config.hidden_size != teacher.config.hidden_size):
        raise UserError("--hidden-weight needs the pruned model's hidden size to stay the teacher's: drop --hidden "
                        "or --hidden-weight")
    student_depth = families.family_of(model.config, "prune").depth(model.config)
    teacher_depth = families.family_of(teacher.config, "prune").depth(teacher.config)
    kept = (source.get("student") or {}).get("kept_layers")
    if student_depth == teacher_depth:      # the teacher is the model's own parent (or as deep): layer by layer
        kept = list(range(teacher_depth))
    elif kept is not None and (len(kept) != student_depth or max(kept) >= teacher_depth):
        kept = None                          # copied from another teacher: spread evenly over this one
    options.update(hidden_weight=cfg.hidden_weight, attention_weight=cfg.attention_weight,
                   layer_map=hidden_layer_map(student_depth, teacher_depth, kept))
    return options


def _summary(metrics: dict) -> dict | None:
    return headline(metrics.get("validation"))


def _load_model(path: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path))


def prune(model_dir, out, data: DataConfig, cfg: PruneConfig) -> Path:
    """Prune a PyTorch artifact's model in ``cfg.steps`` steps with recovery, and write a PyTorch artifact."""
    from slimship.compress.distill import (distill_trainer_class, kd_train_set, metric_delta, read_unlabeled,
                                           transfer_texts)
    from slimship.compress.profile import example_inputs, model_profile, weights_size
    from slimship.train import recipe
    from slimship.train.recipe import TokenizedDataset
    from slimship.train.artifacts import (evaluate_model, evaluate_with_thresholds, load_pytorch_artifact,
                                          load_stage_data, save_model_artifact, task_record, work_dir_for)

    cfg.check()
    out, teacher_dir = Path(out), cfg.teacher
    unlabeled = read_unlabeled(data, cfg) if teacher_dir is not None else []
    source, model, tokenizer = load_pytorch_artifact(model_dir)
    labels = source["labels"]
    teacher = None
    if teacher_dir is not None:
        teacher_manifest, teacher, _ = load_pytorch_artifact(teacher_dir)
        if teacher_manifest["labels"] != labels:
            raise UserError(f"--teacher {teacher_dir}: labels {teacher_manifest['labels']} differ from the "
                            f"model's {labels}")
    start_shape = Shape.of(model)
    _, pruning = pruning_of(model)
    head_unit = int(model.config.num_key_value_heads) if pruning.head_config == "gqa" else 1
    removals = step_removals(plan(start_shape, cfg, model), cfg.steps, start_shape.head_dim, head_unit)
    amp = recipe.resolve_amp(cfg.amp) if cfg.recovery_epochs > 0 else "off"
    loaded = load_stage_data(data, manifest=source)
    train_split = loaded.splits["train"]
    val = loaded.splits.get("validation")

    work = work_dir_for(out)
    if work.exists() and not cfg.resume:
        stage_log(f"discarding an earlier run's work in {work} (use --resume to continue one)")
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    before_profile = model_profile(model, cfg.max_length)
    before = evaluate_model(model, tokenizer, loaded, cfg.max_length, cfg.eval_batch_size)
    stage_log(f"before pruning: {_summary(before)}; shape {start_shape}")
    batches = importance_batches(tokenizer, train_split.inputs, train_split.labels, cfg)

    recovery_cfg = None
    train_set = eval_set = None
    transfer, kd_options = None, {}
    if cfg.recovery_epochs > 0:
        recovery_cfg = cfg.recovery_config()
        if teacher is not None:  # the teacher labels the transfer set once for every step's recovery
            kd_options = kd_recovery_options(source, model, teacher, cfg)
            extra, transfer = transfer_texts(teacher, tokenizer, train_split.inputs, unlabeled, cfg)
            mode = "online" if cfg.layer_losses else "cache"
            train_set, _ = kd_train_set(teacher, tokenizer, train_split.inputs, train_split.labels, cfg, mode,
                                        extra, teacher_key=artifact.manifest_digest(teacher_dir))
        else:
            if cfg.augment or cfg.unlabeled:    # asked for explicitly (auto, None, stays quiet)
                stage_log("no --teacher: the transfer set (--augment, --unlabeled) needs one to label it; unused")
            if cfg.mixup_weight > 0:
                stage_log("no --teacher: --mixup-weight needs one to answer the mixed inputs; unused")
            train_set = TokenizedDataset(tokenizer, train_split.inputs, train_split.labels, cfg.max_length)
        eval_set = TokenizedDataset(tokenizer, val.inputs, val.labels, cfg.max_length) if val else None

    history: list[dict[str, Any]] = []
    outcomes = []
    for k, removal in enumerate(removals, start=1):
        step_dir = work / f"step-{k}"
        record_file = step_dir / "step.json"
        if (step_dir / "recovered").is_dir() and record_file.is_file():   # finished before a crash
            model = _load_model(step_dir / "recovered")
            history.append(json.loads(record_file.read_text()))
            stage_log(f"step {k}/{cfg.steps}: done in an earlier run, resumed from {step_dir / 'recovered'}")
            continue
        if (step_dir / "pruned").is_dir() and (step_dir / "pruned.json").is_file():
            model = _load_model(step_dir / "pruned")
            record = json.loads((step_dir / "pruned.json").read_text())
        else:
            prune_step(model, removal, cfg.importance, batches, cfg.max_length)
            record = {"step": k, "removed": removal.__dict__, "shape": Shape.of(model).__dict__,
                      "after_pruning": _summary(evaluate_model(model, tokenizer, loaded, cfg.max_length,
                                                               cfg.eval_batch_size))}
            model.save_pretrained(step_dir / "pruned", safe_serialization=True)
            (step_dir / "pruned.json").write_text(json.dumps(record))
        stage_log(f"step {k}/{cfg.steps}: pruned to {record['shape']}; validation {record['after_pruning']}")
        if recovery_cfg is not None:
            trainer_class = distill_trainer_class() if teacher is not None else None
            trainer = recipe.build_trainer(model, tokenizer, train_set, eval_set, recovery_cfg, step_dir / "trainer",
                                           labels, amp, trainer_class=trainer_class, **kd_options)
            outcome = recipe.run(trainer, recovery_cfg, step_dir / "trainer")
            model = recipe.trained_model(trainer)
            record["recovery"] = {k2: outcome[k2] for k2 in ("epochs_run", "steps", "stopped_early", "best_metric",
                                                             "train_loss", "train_seconds")}
            record["after_recovery"] = _summary(evaluate_model(model, tokenizer, loaded, cfg.max_length,
                                                               cfg.eval_batch_size))
            outcomes.append(outcome)
            stage_log(f"step {k}/{cfg.steps}: after recovery {record['after_recovery']}")
        model.save_pretrained(step_dir / "recovered", safe_serialization=True)
        record_file.write_text(json.dumps(record))
        history.append(record)

    model.eval()
    metrics, thresholds = evaluate_with_thresholds(model, tokenizer, loaded, cfg.max_length, cfg.eval_batch_size)
    after_profile = model_profile(model, cfg.max_length)
    probe = example_inputs(model, min(32, cfg.max_length), batch_size=2)
    reload_diff = reload_difference(model, probe)
    if reload_diff > 1e-4:
        raise RuntimeError(f"the pruned model does not reload faithfully (max |logit diff| {reload_diff})")
    config = {"model": str(model_dir), **data.options(), "teacher": str(teacher_dir) if teacher_dir else None,
              **cfg.as_dict()}
    with artifact.create(out, "prune", format="pytorch", parent=model_dir, config=config) as art:
        save_model_artifact(art, model, tokenizer)
        art.manifest.update(
            labels=labels, **task_record(loaded, thresholds), max_length=cfg.max_length, metrics=metrics, amp=amp,
            parameters=after_profile["parameters"], macs=after_profile["macs"], file_size=weights_size(art.dir),
            before={**before_profile, "file_size": weights_size(model_dir), "shape": start_shape.__dict__,
                    "metrics": _summary(before)},
            after={**after_profile, "shape": Shape.of(model).__dict__},
            pruning={"heads": cfg.heads, "ffn": cfg.ffn, "hidden": cfg.hidden, "importance": cfg.importance,
                     "steps": history, "teacher": str(Path(teacher_dir).absolute()) if teacher_dir else None,
                     "reload_max_abs_diff": reload_diff},
            # the three points the issue asks for: the input, right after (the last) pruning, after recovery
            validation_trace={"before": _summary(before), "after_pruning": history[-1]["after_pruning"],
                              "after_recovery": history[-1].get("after_recovery")},
            delta={"validation": metric_delta(_summary(metrics), _summary(before))},
            transfer=transfer,
            early_stopping=outcomes[-1] if outcomes else None,
            data={name: {"source": s.source, "rows": len(s), "skipped_empty": s.skipped_empty}
                  for name, s in loaded.splits.items()},
        )
    print_prune_summary(out, before_profile, _summary(before), history, after_profile, _summary(metrics))
    shutil.rmtree(work, ignore_errors=True)
    return out


def print_prune_summary(out, before_profile, before, history, after_profile, after) -> None:
    acc = shown
    lines = [f"== pruned {out} ==",
             f"  before          {acc(before)}  {before_profile['parameters']:,} params  "
             f"{before_profile['macs']:,} MACs/row"]
    for record in history:
        lines.append(f"  step {record['step']}          pruned {acc(record['after_pruning'])}  "
                     f"recovered {acc(record.get('after_recovery'))}  shape {record['shape']}")
    lines.append(f"  after           {acc(after)}  {after_profile['parameters']:,} params  "
                 f"{after_profile['macs']:,} MACs/row ({after_profile['macs'] / max(1, before_profile['macs']):.2f}x)")
    print("\n".join(lines), flush=True)
