"""Model families: the one place that knows how each architecture is laid out.

Every stage asks this registry instead of naming module paths itself. A ``Family`` says, for one
``config.model_type``:

- where the transformer blocks live (``layers_path``) and which config key holds the depth (``depth_key``),
  so distillation can drop layers and the search can read a checkpoint's depth from its config.json;
- which inputs the model takes (DistilBERT, ModernBERT and MPNet take no ``token_type_ids``);
- its pad token and padding side (RoBERTa/XLM-R pad with ``<pad>``, id 1, not id 0); decoders (GPT-2, Llama,
  Qwen) without a pad token pad with their EOS, and the model's config.pad_token_id is set to the same id, because
  they classify from the last token that is not the pad id (``pooling="last"``);
- which modules LoRA adapts (``lora_targets``);
- the tokenizer files it may carry beside tokenizer.json (vocab.txt, merges.txt, SentencePiece models);
- its classification head (modules after the encoder);
- whether ONNX Runtime's transformer optimizer knows it (the search skips O1-O3 for those it does not);
- the parts pruning needs (attention projections and head layout, FFN modules, hidden size): getters on a
  block, filled in by the pruning side.

Unknown model types get a one-line ``UserError`` naming the model type and the operation asked for.

Nothing here imports torch or transformers at module level: the search reads depths from config.json dicts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from slimship.core.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class AttentionParts:
    """The attention of one block as pruning sees it. ``qkv`` is set instead of query/key/value where the
    family fuses the three projections into one Linear (ModernBERT's Wqkv: output rows [q; k; v])."""

    module: Any                     # the module whose head-count attributes must be updated after pruning
    query: Any = None
    key: Any = None
    value: Any = None
    qkv: Any = None
    output: Any = None


@dataclass(frozen=True)
class FFNParts:
    """The feed-forward of one block: ``up`` (hidden -> intermediate) and ``down`` (intermediate -> hidden).
    ``gated`` where ``up`` produces [input; gate] halves (ModernBERT's Wi, GeGLU); ``gate`` where the gate is a
    Linear of its own (Llama/Qwen's SwiGLU: down(act(gate(x)) * up(x))), cut together with ``up`` and ``down``."""

    up: Any
    down: Any
    gated: bool = False
    gate: Any = None


@dataclass(frozen=True)
class Family:
    name: str                               # the registry key: config.model_type
    layers_path: str | None                 # dotted path from the *ForSequenceClassification model to the blocks'
                                            # ModuleList; None: the blocks share weights (ALBERT)
    depth_key: str = "num_hidden_layers"    # config.json key of the depth (DistilBERT: n_layers)
    inputs: tuple[str, ...] = ("input_ids", "token_type_ids", "attention_mask")
    pad_token: str = "[PAD]"                # used only when a tokenizer defines no pad token of its own
    padding_side: str = "right"
    tokenizer_files: tuple[str, ...] = ()   # besides TOKENIZER_FILES
    head: tuple[str, ...] = ("classifier",)  # modules after the encoder (pooler, classifier)
    ort_optimizer: bool = True              # ONNX Runtime's transformer optimizer (O1-O3) supports it
    pooling: str = "first"                  # "last": the head reads the last token that is not the pad id
    pad_from_eos: bool = False              # no pad token of its own: pad with EOS (and tell the config)
    lora_targets: tuple[str, ...] = ()      # module names LoRA adapts (the head is trained fully)
    per_layer_keys: tuple[str, ...] = ()    # config lists with one entry per block (Qwen's layer_types)
    # Config keys for the pruned shapes.
    hidden_key: str = "hidden_size"
    heads_key: str = "num_attention_heads"
    intermediate_key: str = "intermediate_size"
    # Pruning hooks: block -> parts (None: this family cannot be pruned yet).
    attention: Callable[[Any], AttentionParts] | None = None
    ffn: Callable[[Any], FFNParts] | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # room for later per-family facts

    @property
    def decoder(self) -> bool:
        return self.pooling == "last"

    @property
    def takes_token_type_ids(self) -> bool:
        return "token_type_ids" in self.inputs

    def depth(self, config) -> int:
        """The number of blocks, from a config object or a config.json dict."""
        value = config.get(self.depth_key) if isinstance(config, dict) else getattr(config, self.depth_key)
        return int(value or 0)

    def set_depth(self, config, n: int) -> None:
        setattr(config, self.depth_key, n)

    def layers(self, model):
        """The ModuleList of blocks (raises for shared-weight families, which have no such list)."""
        if self.layers_path is None:
            raise UserError(f"{self.name}: its layers share one set of weights; there is no list of blocks")
        return _get(model, self.layers_path)

    def set_layers(self, model, blocks) -> None:
        import torch

        holder_path, _, attr = self.layers_path.rpartition(".")
        setattr(_get(model, holder_path), attr, torch.nn.ModuleList(blocks))
        self.set_depth(model.config, len(blocks))


def _get(obj, dotted: str):
    for part in dotted.split(".") if dotted else ():
        obj = getattr(obj, part)
    return obj


# --- pruning hooks ---------------------------------------------------------------------------------------------


def _bert_attention(block) -> AttentionParts:
    a = block.attention
    return AttentionParts(module=a.self, query=a.self.query, key=a.self.key, value=a.self.value,
                          output=a.output.dense)


def _bert_ffn(block) -> FFNParts:
    return FFNParts(up=block.intermediate.dense, down=block.output.dense)


def _distilbert_attention(block) -> AttentionParts:
    a = block.attention
    return AttentionParts(module=a, query=a.q_lin, key=a.k_lin, value=a.v_lin, output=a.out_lin)


def _distilbert_ffn(block) -> FFNParts:
    return FFNParts(up=block.ffn.lin1, down=block.ffn.lin2)


def _deberta_attention(block) -> AttentionParts:
    a = block.attention
    return AttentionParts(module=a.self, query=a.self.query_proj, key=a.self.key_proj, value=a.self.value_proj,
                          output=a.output.dense)


def _modernbert_attention(block) -> AttentionParts:
    return AttentionParts(module=block.attn, qkv=block.attn.Wqkv, output=block.attn.Wo)


def _modernbert_ffn(block) -> FFNParts:
    return FFNParts(up=block.mlp.Wi, down=block.mlp.Wo, gated=True)


def _mpnet_attention(block) -> AttentionParts:
    a = block.attention
    return AttentionParts(module=a.attn, query=a.attn.q, key=a.attn.k, value=a.attn.v, output=a.attn.o)



def _albert_attention(block) -> AttentionParts:
    a = block.attention
    return AttentionParts(module=a, query=a.query, key=a.key, value=a.value, output=a.dense)


def _albert_ffn(block) -> FFNParts:
    return FFNParts(up=block.ffn, down=block.ffn_output)


def _gpt2_attention(block) -> AttentionParts:
    return AttentionParts(module=block.attn, qkv=block.attn.c_attn, output=block.attn.c_proj)


def _gpt2_ffn(block) -> FFNParts:
    return FFNParts(up=block.mlp.c_fc, down=block.mlp.c_proj)


def _llama_attention(block) -> AttentionParts:
    a = block.self_attn
    return AttentionParts(module=a, query=a.q_proj, key=a.k_proj, value=a.v_proj, output=a.o_proj)


def _llama_ffn(block) -> FFNParts:
    return FFNParts(up=block.mlp.up_proj, down=block.mlp.down_proj, gate=block.mlp.gate_proj)

# --- the registry ----------------------------------------------------------------------------------------------

_BERT_LIKE = dict(attention=_bert_attention, ffn=_bert_ffn, lora_targets=("query", "key", "value"))
_ROBERTA_TOKENIZER = ("vocab.json", "merges.txt")
_NO_TYPES = ("input_ids", "attention_mask")

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("bert", "bert.encoder.layer", tokenizer_files=("vocab.txt",), head=("bert.pooler", "classifier"),
           notes="BERT, MiniLM", **_BERT_LIKE),
    Family("distilbert", "distilbert.transformer.layer", depth_key="n_layers", inputs=_NO_TYPES,
           tokenizer_files=("vocab.txt",), head=("pre_classifier", "classifier"), hidden_key="dim",
           heads_key="n_heads", intermediate_key="hidden_dim", attention=_distilbert_attention,
           ffn=_distilbert_ffn),
    Family("roberta", "roberta.encoder.layer", inputs=_NO_TYPES, pad_token="<pad>", tokenizer_files=_ROBERTA_TOKENIZER,
           **_BERT_LIKE),
    Family("xlm-roberta", "roberta.encoder.layer", inputs=_NO_TYPES, pad_token="<pad>",
           tokenizer_files=("sentencepiece.bpe.model",), **_BERT_LIKE),
    Family("electra", "electra.encoder.layer", tokenizer_files=("vocab.txt",), **_BERT_LIKE),
    Family("deberta-v2", "deberta.encoder.layer", tokenizer_files=("spm.model",), head=("pooler", "classifier"),
           attention=_deberta_attention, ffn=_bert_ffn, notes="DeBERTa v2 and v3"),
    Family("modernbert", "model.layers", inputs=_NO_TYPES, head=("model.final_norm", "head", "classifier"),
           ort_optimizer=False, attention=_modernbert_attention, ffn=_modernbert_ffn,
           notes="block 0 has no attention norm and every n-th block attends globally, both by position"),
    Family("mpnet", "mpnet.encoder.layer", inputs=_NO_TYPES, pad_token="<pad>", tokenizer_files=("vocab.txt",),
           ort_optimizer=False, attention=_mpnet_attention, ffn=_bert_ffn),
    Family("albert", None, tokenizer_files=("spiece.model",), head=("albert.pooler", "classifier"),
           attention=_albert_attention, ffn=_albert_ffn,
           notes="one shared block run num_hidden_layers times: dropping layers only shortens the loop"),
    # Decoders: causal blocks, so right padding leaves every real token's output as it is alone, and the head
    # reads the last non-pad token. (Left padding would shift their position ids, which are not derived from
    # the mask.)
    Family("gpt2", "transformer.h", depth_key="n_layer", inputs=_NO_TYPES, pad_token="<|endoftext|>",
           tokenizer_files=_ROBERTA_TOKENIZER, head=("transformer.ln_f", "score"), ort_optimizer=False,
           hidden_key="n_embd", heads_key="n_head", intermediate_key="n_inner", pooling="last",
           pad_from_eos=True, lora_targets=("c_attn", "c_proj", "c_fc"), attention=_gpt2_attention,
           ffn=_gpt2_ffn, notes="GPT-2; Conv1D projections (weights stored input-major), pruned by hand"),
    *(Family(name, "model.layers", inputs=_NO_TYPES, pad_token="<|endoftext|>",
             tokenizer_files=_ROBERTA_TOKENIZER + ("tokenizer.model",), head=("model.norm", "score"),
             ort_optimizer=False, pooling="last", pad_from_eos=True,
             lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
             attention=_llama_attention, ffn=_llama_ffn, per_layer_keys=("layer_types",), notes=notes)
      for name, notes in (("llama", "Llama, DeepSeek-R1-Distill-Llama"),
                          ("qwen2", "Qwen2/2.5, DeepSeek-R1-Distill-Qwen"), ("qwen3", "Qwen3"))),
)}


def model_type_of(config) -> str:
    if isinstance(config, dict):
        return str(config.get("model_type", ""))
    return str(getattr(config, "model_type", "") or "")


def family_of(config, operation: str) -> Family:
    """The family of a model config (object or config.json dict); ``operation`` names what was asked, for the
    error: "distill", "export", "train", ..."""
    model_type = model_type_of(getattr(config, "config", config))  # a model works too
    family = FAMILIES.get(model_type)
    if family is None:
        raise UserError(f"{operation}: model type {model_type or '(none)'!r} is not supported; supported: "
                        f"{', '.join(sorted(FAMILIES))}")
    return family


def supported() -> list[str]:
    return sorted(FAMILIES)


# --- operations every stage shares -----------------------------------------------------------------------------


def prepare_tokenizer(tokenizer, config, operation: str = "train"):
    """Make a Hugging Face tokenizer produce exactly the inputs the family's model takes, and pad with the
    family's pad token when it has none of its own. Persisted by save_pretrained (through init_kwargs)."""
    family = family_of(config, operation)
    names = [n for n in family.inputs]
    tokenizer.model_input_names = names
    tokenizer.init_kwargs["model_input_names"] = names
    tokenizer.padding_side = family.padding_side
    tokenizer.init_kwargs["padding_side"] = family.padding_side
    if tokenizer.pad_token is None and family.pad_from_eos and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None and family.pad_token in tokenizer.get_vocab():
        tokenizer.pad_token = family.pad_token
    if tokenizer.pad_token is None:
        raise UserError(f"{operation}: the {family.name} tokenizer has no pad token (and no {family.pad_token!r})")
    return tokenizer


def align_pad_id(model, tokenizer, operation: str = "train") -> None:
    """Make a last-token family's config.pad_token_id the tokenizer's pad id: its head finds each row's last
    real token by comparing the ids with config.pad_token_id, so padding with any other id would classify rows
    from their padding. Encoders pool by position and are left alone."""
    family = family_of(model.config, operation)
    if not family.decoder:
        return
    pad_id = int(tokenizer.pad_token_id)
    current = getattr(model.config, "pad_token_id", None)
    if current != pad_id:
        if current is not None:
            from slimship.core.artifact import stage_log

            stage_log(f"{family.name}: the config's pad_token_id {current} becomes the tokenizer's "
                      f"{tokenizer.pad_token!r} ({pad_id}), which is what pads the batches")
        model.config.pad_token_id = pad_id


def padding_record(tokenizer) -> dict[str, Any]:
    """What an ONNX runtime must pad with, for the manifest: read back without transformers."""
    return {"pad_token": tokenizer.pad_token, "pad_token_id": int(tokenizer.pad_token_id),
            "padding_side": tokenizer.padding_side}


def student_with_layers(teacher, kept: list[int], operation: str = "distill"):
    """A fresh model of the teacher's class with ``len(kept)`` blocks, block i initialised from teacher block
    ``kept[i]``; embeddings and head copied.

    The student is built from its config (not edited in place), so it is exactly what ``from_pretrained``
    rebuilds from the saved artifact: families whose blocks depend on their position (ModernBERT: block 0 has
    no attention norm, every n-th block attends globally) get the layout of their new position, and weights
    that position has no place for are dropped (returned, for the log).
    """
    family = family_of(teacher.config, operation)
    config = copy.deepcopy(teacher.config)
    for key in family.per_layer_keys:       # each kept block keeps its own entry (sliding or full attention)
        values = getattr(config, key, None)
        if isinstance(values, list) and len(values) == family.depth(teacher.config):
            setattr(config, key, [values[i] for i in kept])
    family.set_depth(config, len(kept))
    student = type(teacher)(config).to(dtype=next(teacher.parameters()).dtype)
    state = teacher.state_dict()
    if family.layers_path is None:       # shared blocks: the same weights, run fewer times
        mapped = dict(state)
    else:
        prefix = family.layers_path + "."
        position = {t: s for s, t in enumerate(kept)}
        mapped = {}
        for key, value in state.items():
            if not key.startswith(prefix):
                mapped[key] = value
                continue
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in position:
                mapped[f"{prefix}{position[int(index)]}.{rest}"] = value
    result = student.load_state_dict(mapped, strict=False)
    if result.missing_keys:
        raise RuntimeError(f"{family.name}: the student has weights no teacher block provides: "
                           f"{result.missing_keys[:5]}")
    student.train(teacher.training)
    return student, list(result.unexpected_keys)


# --- pruning: what structured pruning needs besides the block hooks ------------------------------------------


@dataclass(frozen=True)
class Pruning:
    """How slimship/compress/prune.py cuts one family's heads, FFN channels and hidden size, and how the cut
    shapes are written back so that ``from_pretrained`` rebuilds the same modules. Paths are dotted attribute
    paths from the task model or from its base model (whichever has them)."""

    head_attrs: tuple[str, str, str] = ("num_attention_heads", "attention_head_size", "all_head_size")
    # (head count, head size, all heads' width) attributes of AttentionParts.module that its forward reads
    # How the config describes fewer heads: "pruned_heads" (head slots of hidden / head size, the removed ones
    # listed in config.pruned_heads and cut when the model is built), "tied" (heads x head size must equal
    # the hidden size: heads are pruned only together with as much hidden size), or "gqa" (grouped-query
    # attention with head_dim in the config: num_attention_heads query heads share num_key_value_heads KV
    # heads in equal groups, so every group loses as many query heads; the KV heads stay).
    head_config: str = "pruned_heads"
    hidden_root: tuple[str, ...] = ("embeddings.word_embeddings",)  # the first present one starts the residual
    optional_projection: bool = False   # the root is a projection the config drops when hidden == embedding size
    side_outputs: tuple[str, ...] = ()  # hidden-wide Linears outside the residual stream (pooler, head dense)
    # Hidden-wide tables whose weight the forward reads directly (not by calling the module), so torch-pruning's
    # trace misses them: their columns are cut with the residual stream's.
    hidden_tables: tuple[str, ...] = ()
    # The projections are transformers' Conv1D (GPT-2: weight [in, out], q/k/v fused in c_attn), which
    # torch-pruning's trace does not know: heads and FFN channels are cut by hand.
    conv1d: bool = False
    refused: tuple[tuple[str, str], ...] = ()   # (operation, why) for what the family's config cannot describe

    def refusal(self, operation: str) -> str | None:
        return dict(self.refused).get(operation)


_MODERNBERT_TIED = ("its fused Wqkv and rotary embeddings take the head size from hidden_size / "
                    "num_attention_heads; cutting heads or hidden size is not implemented for it")
_MPNET_HEADS = ("one relative-position bias per head, shared by all layers, is added to every layer's scores, "
                "so its config cannot describe fewer heads")
_DECODER_HIDDEN = ("the residual stream runs through RMSNorms, rotary embeddings and the head of every block; "
                   "cutting it is not implemented for decoders")
_GPT2_HIDDEN = ("the residual stream runs through the position table, every block's LayerNorms and the head; "
                "cutting it is not implemented for GPT-2")
_GQA = Pruning(head_attrs=("num_key_value_groups", "head_dim", ""), head_config="gqa",
               hidden_root=("embed_tokens",), refused=(("hidden", _DECODER_HIDDEN),))
PRUNING: dict[str, Pruning] = {
    "llama": _GQA, "qwen2": _GQA, "qwen3": _GQA,
    # GPT-2's config keeps n_head head slots of n_embd / n_head and lists the removed ones in pruned_heads,
    # which GPT2Attention.prune_heads applies when the model is built, like BERT's.
    "gpt2": Pruning(head_attrs=("num_heads", "head_dim", "split_size"), hidden_root=("wte",), conv1d=True,
                    refused=(("hidden", _GPT2_HIDDEN),)),
    "bert": Pruning(side_outputs=("pooler.dense",)),
    "roberta": Pruning(side_outputs=("classifier.dense",)),
    "xlm-roberta": Pruning(side_outputs=("classifier.dense",)),
    "electra": Pruning(hidden_root=("embeddings_project", "embeddings.word_embeddings"), optional_projection=True,
                       side_outputs=("classifier.dense",)),
    "distilbert": Pruning(head_attrs=("n_heads", "attention_head_size", "dim"), side_outputs=("pre_classifier",)),
    # DeBERTa's attention output is Linear(hidden, hidden): heads x head size is the hidden size.
    "deberta-v2": Pruning(head_config="tied", hidden_root=("embeddings.embed_proj", "embeddings.word_embeddings"),
                          optional_projection=True, side_outputs=("pooler.dense",),
                          hidden_tables=("encoder.rel_embeddings",)),
    "modernbert": Pruning(head_attrs=("num_heads", "head_dim", "all_head_size"), head_config="tied",
                          hidden_root=("embeddings.tok_embeddings",), side_outputs=("head.dense",),
                          refused=(("heads", _MODERNBERT_TIED), ("hidden", _MODERNBERT_TIED))),
    "mpnet": Pruning(side_outputs=("pooler.dense", "classifier.dense"),
                     refused=(("heads", _MPNET_HEADS), ("hidden", _MPNET_HEADS + " (and its head size is "
                                                                   "hidden_size / num_attention_heads)"))),
    "albert": Pruning(hidden_root=("encoder.embedding_hidden_mapping_in",), side_outputs=("pooler",)),
}


def find_module(model, path: str):
    """A module by dotted path from the task model or from its base model; None where neither has it."""
    for root in (model, getattr(model, "base_model", model)):
        try:
            return _get(root, path)
        except AttributeError:
            continue
    return None


def pruning_of(model) -> tuple[Family, Pruning]:
    """The family of a model and its pruning facts, or a one-line UserError naming the family."""
    family = family_of(model.config, "prune")
    pruning = PRUNING.get(family.name)
    if pruning is None or family.attention is None or family.ffn is None:
        raise UserError(f"{family.name}: structured pruning is not supported for this family")
    return family, pruning


def prune_blocks(model) -> list:
    """The blocks pruning cuts, each real one once (ALBERT: the shared layers of every group, in the flattened
    order its config.pruned_heads uses)."""
    family = family_of(model.config, "prune")
    if family.layers_path is None:
        groups = model.base_model.encoder.albert_layer_groups
        return [layer for group in groups for layer in group.albert_layers]
    return list(family.layers(model))
