"""The distill stage: knowledge distillation of a trained teacher artifact into a smaller student.

    distill("runs/teacher", "runs/student", DataConfig("data/"), DistillConfig(layers=3)) -> Path("runs/student")

The student is the teacher with only N of its layers kept (DistilBERT-style: embeddings, the kept layers, pooler
and classifier copied), or a smaller model given with ``student`` (a config.json, a checkpoint dir or a built-in
name). It learns from

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

plus, with ``hidden_weight`` > 0, the mean squared difference of hidden states over a layer map (student layer i
matched to the teacher layer it was copied from; TinyBERT/FastFormers style), and with ``attention_weight`` > 0
the KL divergence of the mapped layers' attention distributions (TinyBERT/MiniLM style; heads averaged first
when a pruned student has fewer), and with ``mixup_weight`` > 0 the same soft-target loss on inputs mixed in the
embedding space (MixKD: each row's word embeddings blended with another row's, both models answering the mix).

The teacher's logits are computed once before training and carried with each example ("cache"), or computed in
every training step ("online"). The teacher is frozen and runs without dropout, so both give the same targets;
caching runs the teacher once in all, in length-sorted inference batches, instead of once per epoch inside the
training loop -- faster on CPU (measured in bench/bench_compress_torch.py), hence the default. The hidden-state
and attention losses need the teacher's activations of every batch, so they always run the teacher online; MixUp
runs it on each batch's mix besides the cached logits. Cached logits are
computed in fp32; online, the teacher runs inside the Trainer's autocast (bf16 where AMP is on), so the targets
agree to bf16 precision.

Training reuses train/recipe.py: the same AMP, early stopping on the student's validation metric, checkpoints,
resume and DDP as the train stage.
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from pathlib import Path

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.artifact import stage_log
from slimship.train import recipe
from slimship.compress import losses
from slimship.compress.config import TEACHER_LOGITS, DistillConfig, check_unlabeled_fits  # noqa: F401 (the stage's options)
from slimship.core.config import DataConfig
from slimship.core.metrics import headline, main_metric_of, main_value, metric_label, shown
from slimship.core.tasks import CLASSIFICATION, MULTILABEL, PROBLEM_TYPE, REGRESSION
from slimship.train.recipe import TokenizedDataset, TrainConfig


# --- the student -----------------------------------------------------------------------------------------------


def layer_indices(teacher_layers: int, layers: int | list[int]) -> list[int]:
    """Which teacher layers the student keeps: N evenly spaced (always ending with the last), or a list."""
    if isinstance(layers, int):
        if not 1 <= layers <= teacher_layers:
            raise UserError(f"--layers {layers}: the teacher has {teacher_layers} layers; keep 1 to {teacher_layers}")
        # The i-th kept layer closes the i-th of N equal blocks, so the last layer (the one the classifier was
        # trained on) is always kept: 6 -> 3 keeps [1, 3, 5].
        return [math.floor((i + 1) * teacher_layers / layers + 0.5) - 1 for i in range(layers)]
    indices = list(layers)
    if not indices:
        raise UserError("--layers: the list of layers to keep is empty")
    bad = [i for i in indices if not 0 <= i < teacher_layers]
    if bad:
        raise UserError(f"--layers: index {bad[0]} is outside the teacher's layers 0..{teacher_layers - 1}")
    if sorted(set(indices)) != indices:
        raise UserError(f"--layers: indices must be increasing and distinct, got {indices}")
    return indices


def student_from_teacher(teacher, indices: list[int]):
    """A student of the teacher's class that keeps only the blocks at ``indices`` (embeddings and head copied).

    The family registry knows where each architecture keeps its blocks and how deep it is; the student is
    built from its own config so the saved artifact reloads to exactly this model (see
    ``families.student_with_layers``)."""
    from slimship.train import families

    student, dropped = families.student_with_layers(teacher, indices, "distill")
    if dropped:
        stage_log(f"student: {len(dropped)} teacher weights have no place at their block's new position "
                  f"(e.g. {dropped[0]}); they are left out")
    return student


def student_tokenizer(spec: str, labels: list[str]):
    """The tokenizer a --student trains with: its own for a checkpoint dir or a built-in name (any family: the
    teacher's soft targets are per text, so the two tokenizations never meet), None for a config.json (a
    random model that must use the teacher's). A trained checkpoint with other labels is refused."""
    import json

    from slimship.train.models import load_tokenizer

    path = Path(spec)
    if path.is_file():
        return None
    for name in ("manifest.json", "config.json"):
        try:
            recorded = json.loads((path / name).read_text()) if (path / name).is_file() else {}
        except ValueError:
            continue
        theirs = recorded.get("labels") if name == "manifest.json" else \
            [recorded.get("id2label", {}).get(str(i)) for i in range(len(recorded.get("id2label") or {}))]
        if theirs and not all(str(t).startswith("LABEL_") for t in theirs) and list(theirs) != list(labels):
            raise UserError(f"--student {spec}: trained for labels {list(theirs)}, the teacher's are {labels}; "
                            f"distil into an untrained checkpoint or one with the teacher's labels")
    return load_tokenizer(spec)


def load_student(spec: str, labels: list[str], seed: int, task: str = "classification"):
    """A student from a config.json (randomly initialised), a checkpoint dir or a built-in model name, with the
    head of ``task``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from slimship.train.models import load_classifier

    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        import torch

        try:
            config = AutoConfig.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise UserError(f"--student {spec}: not a model config ({e})") from None
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        config.problem_type = PROBLEM_TYPE[task]
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(config)
    return load_classifier(spec, labels, seed=seed, task=task)


def hidden_layer_map(student_layers: int, teacher_layers: int, kept: list[int] | None) -> list[tuple[int, int]]:
    """(student hidden-state index, teacher hidden-state index) pairs; index 0 is the embedding output."""
    if kept is None:  # a separate student: spread its layers evenly over the teacher's
        kept = [math.floor((i + 1) * teacher_layers / student_layers + 0.5) - 1 for i in range(student_layers)]
    return [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(kept)]


# --- the loss --------------------------------------------------------------------------------------------------


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(labels): the classification case of
    ``losses.kd_loss``, which has every task's."""
    return losses.kd_loss(CLASSIFICATION, student_logits, teacher_logits, labels, temperature, alpha)


def hidden_mse(student_states, teacher_states, layer_map, attention_mask):
    """Mean squared hidden-state difference over real (unpadded) tokens, averaged over the mapped layers."""
    mask = attention_mask.unsqueeze(-1).float()
    tokens = mask.sum().clamp(min=1.0)
    total = 0.0
    for s, t in layer_map:
        diff = (student_states[s].float() - teacher_states[t].float()) ** 2
        total = total + (diff.mean(-1, keepdim=True) * mask).sum() / tokens
    return total / len(layer_map)


def attention_kl(student_attentions, teacher_attentions, layer_map, attention_mask):
    """KL(teacher || student) of the attention distributions, per query token over the keys, averaged over heads,
    real (unpadded) query tokens and the mapped layers (the embedding pair (0, 0) has no attention). Per head
    when both have the same heads; a pruned student with fewer heads is matched on the head-averaged maps."""
    mask = attention_mask.float()
    tokens = mask.sum().clamp(min=1.0)
    pairs = [(s, t) for s, t in layer_map if s > 0 and t > 0]
    total = 0.0
    for s, t in pairs:
        student, teacher = student_attentions[s - 1].float(), teacher_attentions[t - 1].float()
        if student.shape[1] != teacher.shape[1]:
            student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
        kl = (teacher * (teacher.clamp_min(1e-12).log() - student.clamp_min(1e-12).log())).sum(-1)
        total = total + (kl.mean(1) * mask).sum() / tokens
    return total / max(1, len(pairs))


# MixKD's Beta(a, a) for the mixing weight, folded to [0.5, 1] so each mix stays closest to its own row (whose
# segment ids it keeps); 0.4 is the MixUp papers' usual choice for text.
MIXUP_BETA = 0.4


def mixup_plan(batch_size: int):
    """For one batch: each row's partner (a shuffle of the rows) and its own weight lambda in [0.5, 1]. Drawn from
    torch's global generator, which the Trainer seeds, so a run with the same seed mixes the same way."""
    import torch

    partner = torch.randperm(batch_size)
    weight = torch.distributions.Beta(MIXUP_BETA, MIXUP_BETA).sample((batch_size,))
    return partner, torch.maximum(weight, 1.0 - weight)


def mixed_logits(model, features: dict, partner, weight):
    """The model's output on word embeddings mixed row by row, weight * e_i + (1 - weight) * e_partner(i), attending
    to the tokens of either row. Each model mixes its own embeddings; position and segment embeddings are added
    by the model as usual."""
    import torch

    embeddings = model.get_input_embeddings()(features["input_ids"])
    w = weight.to(device=embeddings.device, dtype=embeddings.dtype).view(-1, 1, 1)
    mixed = w * embeddings + (1.0 - w) * embeddings[partner]
    mask = torch.maximum(features["attention_mask"], features["attention_mask"][partner])
    rest = {k: v for k, v in features.items() if k not in ("input_ids", "attention_mask")}
    return model(inputs_embeds=mixed, attention_mask=mask, **rest).logits


def check_mixup(cfg, family, own_tokenizer=None) -> None:
    """MixUp needs the student to read the teacher's tokens (both mix the same rows) and an encoder's first-token
    head (a decoder's head finds each row's last token from the ids, which a mix does not have)."""
    if cfg.mixup_weight <= 0:
        return
    if own_tokenizer is not None:
        raise UserError("--mixup-weight needs the student to read the teacher's tokens; this student has its own "
                        "tokenizer")
    if family.decoder:
        raise UserError(f"--mixup-weight: {family.name} classifies from each row's last token, which mixed "
                        f"embeddings do not mark; use it with encoder models")


def want_attentions(model) -> None:
    """Attention maps come back only from eager attention in newer families; switch where the model allows it
    (the same maths, slower). Families that pick their attention class at build time fall back by themselves."""
    try:
        model.set_attn_implementation("eager")
    except Exception:  # older or custom families without the switch: checked when the maps come back
        pass


@functools.cache
def distill_trainer_class():
    """The Trainer subclass to pass to recipe.build_trainer(trainer_class=...) (made lazily: transformers)."""
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """The recipe's Trainer with a distillation loss; evaluation stays plain cross-entropy of the student."""

        def __init__(self, *args, teacher=None, temperature: float = 2.0, alpha: float = 0.5,
                     hidden_weight: float = 0.0, attention_weight: float = 0.0, layer_map=None,
                     mixup_weight: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher
            if teacher is not None:
                self.teacher.to(self.args.device).eval()
                for p in self.teacher.parameters():
                    p.requires_grad_(False)
            self.temperature, self.alpha = temperature, alpha
            self.hidden_weight, self.attention_weight, self.layer_map = hidden_weight, attention_weight, layer_map
            self.mixup_weight = mixup_weight
            if attention_weight > 0:
                want_attentions(self.model)
                want_attentions(self.teacher)
            self.loss_parts: dict[str, float] = {}

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "teacher_logits" not in self._signature_columns:  # else the Trainer drops the cached logits
                self._signature_columns.append("teacher_logits")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            cached = inputs.pop("teacher_logits", None)
            if not model.training:
                outputs = model(**inputs)
                return (outputs.loss, outputs) if return_outputs else outputs.loss
            labels = inputs["labels"]
            features = {k: v for k, v in inputs.items() if k != "labels"}
            want_hidden, want_attn = self.hidden_weight > 0, self.attention_weight > 0
            extra = {"output_hidden_states": True} if want_hidden else {}
            if want_attn:
                extra["output_attentions"] = True
            outputs = model(**features, **extra)
            teacher_out = None
            if cached is None or want_hidden or want_attn:
                with torch.no_grad():
                    teacher_out = self.teacher(**features, **extra)
            target = cached if cached is not None else teacher_out.logits
            task = recipe.task_of_model(model)
            loss = losses.kd_loss(task, outputs.logits, target, labels, self.temperature, self.alpha)
            if self.mixup_weight > 0:     # soft targets only: a mix of two rows has no label of its own
                partner, weight = mixup_plan(labels.shape[0])
                with torch.no_grad():
                    teacher_mix = mixed_logits(self.teacher, features, partner, weight)
                loss = loss + self.mixup_weight * losses.kd_loss(
                    task, mixed_logits(model, features, partner, weight), teacher_mix, labels, self.temperature, 1.0)
            if want_hidden:
                loss = loss + self.hidden_weight * hidden_mse(outputs.hidden_states, teacher_out.hidden_states,
                                                              self.layer_map, features["attention_mask"])
            if want_attn:
                if not outputs.attentions or outputs.attentions[0] is None or not teacher_out.attentions:
                    raise UserError(f"--attention-weight: {type(model).__name__} returns no attention maps; "
                                    f"use --hidden-weight instead")
                loss = loss + self.attention_weight * attention_kl(outputs.attentions, teacher_out.attentions,
                                                                   self.layer_map, features["attention_mask"])
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


class KDDataset(TokenizedDataset):
    """Tokenized training rows that carry the teacher's logits (a plain list per row, so the collator stacks it)."""

    def __init__(self, tokenizer, texts, labels, max_length, teacher_logits):
        super().__init__(tokenizer, texts, labels, max_length)
        self.teacher_logits = [row.tolist() for row in teacher_logits]

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["teacher_logits"] = self.teacher_logits[i]
        return item


def read_unlabeled(data: DataConfig, cfg) -> list[str]:
    """The ``--unlabeled`` file's texts (cfg is a TransferOptions), read before any work so a bad file stops
    the stage at once."""
    from slimship.core.data import read_texts

    if not cfg.unlabeled:
        return []
    texts, skipped = read_texts(cfg.unlabeled, data.text_column)
    if skipped:
        stage_log(f"{cfg.unlabeled}: skipped {skipped} rows with empty text")
    return texts


AUTO_AUGMENT = 2      # copies per training input when --augment is left at auto (see TransferOptions)
# ... up to this many labelled rows: augmentation was measured to pay on a few thousand (5,000 SST-2 rows: +2.75
# points), while above this the rows themselves show the student much of the teacher's function and tripling
# them triples the students' training time (GoEmotions' 43,000 rows; configs/sst2.yaml distils on 32,000).
AUTO_AUGMENT_MAX_ROWS = 10_000


def transfer_texts(teacher, tokenizer, train_texts: list, unlabeled: list[str], cfg) -> tuple[list, dict]:
    """The inputs a student learns from besides the labelled rows: augmented copies of the training inputs
    (texts or (text, text_pair) tuples) and the unlabeled texts (cfg is a TransferOptions). Returns them and the
    counts for the manifest."""
    from slimship.compress.augment import augmented_texts

    check_unlabeled_fits(unlabeled, any(not isinstance(t, str) for t in train_texts))
    copies = cfg.augment
    if copies is None:
        copies = AUTO_AUGMENT if len(train_texts) <= AUTO_AUGMENT_MAX_ROWS else 0
        if not copies:
            stage_log(f"transfer set: no augmented copies of {len(train_texts):,} training rows (auto augments up "
                      f"to {AUTO_AUGMENT_MAX_ROWS:,}; --augment N asks for N copies)")
    started = time.time()
    augmented: list = []
    if copies > 0:
        embeddings = teacher.get_input_embeddings().weight.detach().float().cpu().numpy()
        augmented = augmented_texts(train_texts, tokenizer, embeddings, copies, cfg.augment_methods.split(","),
                                    seed=cfg.seed)
    counts = {"labelled": len(train_texts), "augmented": len(augmented), "unlabeled": len(unlabeled),
              "augment": copies, "methods": cfg.augment_methods if copies else None,
              "unlabeled_file": str(cfg.unlabeled) if cfg.unlabeled else None,
              "seconds": round(time.time() - started, 2)}
    if augmented or unlabeled:
        stage_log(f"transfer set: {len(train_texts)} labelled rows + {len(augmented)} augmented + "
                  f"{len(unlabeled)} unlabeled texts, all labelled by the teacher")
    return augmented + list(unlabeled), counts


def teacher_targets(task: str, logits) -> list:
    """The training targets the teacher's logits stand for, in the data's own form: a label id
    (classification), 0/1 per label at probability 0.5 (multilabel), the score (regression)."""
    if task == REGRESSION:
        return [float(v) for v in logits[:, 0]]
    if task == MULTILABEL:
        return (logits > 0).astype("float32").tolist()
    return logits.argmax(-1).tolist()


_ANSWERS: dict[str, object] = {}    # the teacher's logits of the last training set labelled in this process


def teacher_logits(teacher, tokenizer, inputs: list, max_length: int, batch_size: int,
                   teacher_key: str | None = None):
    """The teacher's logits of ``inputs``, remembered for the last (teacher, inputs) in this process when
    ``teacher_key`` (the teacher artifact's manifest digest) is given: in a search the distilled student's
    pruning recovery learns from the same transfer set, and labelling 13,000 texts again costs about a minute
    on 2 cores. The same batches in the same order, so a remembered answer is the one a new call would give."""
    import hashlib
    import json

    from slimship.train.artifacts import predict_logits

    if teacher_key is None:
        return predict_logits(teacher, tokenizer, inputs, max_length, batch_size)
    digest = hashlib.sha256(json.dumps([teacher_key, max_length, batch_size, inputs]).encode()).hexdigest()
    if digest not in _ANSWERS:
        _ANSWERS.clear()
        _ANSWERS[digest] = predict_logits(teacher, tokenizer, inputs, max_length, batch_size)
    else:
        stage_log("the teacher's answers on this training set were computed earlier in this run: reused")
    return _ANSWERS[digest].copy()


def kd_train_set(teacher, tokenizer, texts, labels, cfg: TrainConfig, mode: str, extra_texts=(),
                 student_tokenizer=None, teacher_key: str | None = None):
    """The training set for distillation: the labelled rows and ``extra_texts``, which take the teacher's
    prediction as their target. The teacher's logits are cached with each row when ``mode`` is "cache":
    computed per input with the teacher's ``tokenizer``, carried by rows tokenized with ``student_tokenizer``
    (default: the same). ``teacher_key``: see ``teacher_logits``."""
    student_tokenizer = student_tokenizer or tokenizer
    extra = list(extra_texts)
    if mode != "cache" and not extra:
        return TokenizedDataset(student_tokenizer, texts, labels, cfg.max_length), None
    started = time.time()
    all_texts = list(texts) + extra
    logits = teacher_logits(teacher, tokenizer, all_texts, cfg.max_length, cfg.eval_batch_size, teacher_key)
    all_labels = list(labels) + teacher_targets(recipe.task_of_model(teacher), logits[len(texts):])
    seconds = round(time.time() - started, 2)
    stage_log(f"the teacher labelled {len(all_texts)} training texts in {seconds} s")
    if mode != "cache":
        return TokenizedDataset(student_tokenizer, all_texts, all_labels, cfg.max_length), seconds
    return KDDataset(student_tokenizer, all_texts, all_labels, cfg.max_length, logits), seconds


# --- the stage -------------------------------------------------------------------------------------------------


def _summary(metrics: dict | None) -> dict | None:
    return headline(metrics)


def metric_delta(student: dict | None, teacher: dict | None) -> dict | None:
    """Student minus teacher, in fractions (0.01 = one point)."""
    if not student or not teacher:
        return None
    return {k: student[k] - teacher[k] for k in student if k in teacher}


def distill(teacher_dir, out, data: DataConfig, cfg: DistillConfig) -> Path:
    from slimship.compress.profile import model_profile, weights_size
    from slimship.train import families
    from slimship.train.artifacts import (evaluate_model, evaluate_with_thresholds, load_pytorch_artifact,
                                          load_stage_data, save_model_artifact, task_record, work_dir_for)

    cfg.check()
    out = Path(out)
    unlabeled = read_unlabeled(data, cfg)
    teacher_manifest, teacher, tokenizer = load_pytorch_artifact(teacher_dir)
    labels = teacher_manifest["labels"]
    amp = recipe.resolve_amp(cfg.amp)
    stage_log(f"AMP mode: {amp} (asked: {cfg.amp})")
    loaded = load_stage_data(data, manifest=teacher_manifest)

    if cfg.lora_r:
        raise UserError("distill: --lora-r is for slimship train; a student is trained in full")
    teacher_layers = families.family_of(teacher.config, "distill").depth(teacher.config)
    own_tokenizer = None
    if cfg.student:
        own_tokenizer = student_tokenizer(cfg.student, labels)
        if own_tokenizer is not None and type(own_tokenizer) is type(tokenizer) \
                and own_tokenizer.get_vocab() == tokenizer.get_vocab():
            own_tokenizer = None    # the teacher's tokenizer: the hidden-state loss and online logits stay open
        student = load_student(cfg.student, labels, cfg.seed, loaded.task)
        if own_tokenizer is not None:
            families.align_pad_id(student, own_tokenizer, "distill")
            if cfg.layer_losses:
                raise UserError(f"--hidden-weight and --attention-weight need the student to read the teacher's "
                                f"tokens; --student {cfg.student} has its own tokenizer")
        if own_tokenizer is None and student.config.vocab_size != teacher.config.vocab_size:
            raise UserError(f"--student {cfg.student}: vocabulary of {student.config.vocab_size} tokens, the "
                            f"teacher's has {teacher.config.vocab_size}; they must share the teacher's tokenizer")
        kept, origin = None, {"student": cfg.student}
    else:
        kept = layer_indices(teacher_layers, cfg.layers)
        student = student_from_teacher(teacher, kept)
        origin = {"kept_layers": kept}
    student_layers = families.family_of(student.config, "distill").depth(student.config)
    check_mixup(cfg, families.family_of(teacher.config, "distill"))
    check_mixup(cfg, families.family_of(student.config, "distill"), own_tokenizer)
    layer_map = hidden_layer_map(student_layers, teacher_layers, kept)
    if cfg.hidden_weight > 0 and student.config.hidden_size != teacher.config.hidden_size:
        raise UserError(f"--hidden-weight needs the student's hidden size ({student.config.hidden_size}) to equal "
                        f"the teacher's ({teacher.config.hidden_size})")
    mode = cfg.teacher_logits
    if own_tokenizer is not None and mode == "online":
        stage_log(f"--student {cfg.student} has its own tokenizer: the teacher's logits are cached per text")
        mode = "cache"
    if cfg.layer_losses and mode == "cache":
        stage_log("the hidden-state / attention loss needs the teacher's activations of every batch: running it "
                  "online")
        mode = "online"
    stage_log(f"student: {student_layers} layers ({origin}) from a {teacher_layers}-layer teacher; "
              f"teacher logits {mode}")

    train_split = loaded.splits["train"]
    student_tok = own_tokenizer or tokenizer
    extra, transfer = transfer_texts(teacher, tokenizer, train_split.inputs, unlabeled, cfg)
    train_set, cache_seconds = kd_train_set(teacher, tokenizer, train_split.inputs, train_split.labels, cfg, mode,
                                            extra, student_tokenizer=student_tok,
                                            teacher_key=artifact.manifest_digest(teacher_dir))
    val = loaded.splits.get("validation")
    eval_set = TokenizedDataset(student_tok, val.inputs, val.labels, cfg.max_length) if val else None
    work_dir = work_dir_for(out)
    trainer = recipe.build_trainer(
        student, student_tok, train_set, eval_set, cfg, work_dir, labels, amp,
        trainer_class=distill_trainer_class(), teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha,
        hidden_weight=cfg.hidden_weight, attention_weight=cfg.attention_weight, layer_map=layer_map,
        mixup_weight=cfg.mixup_weight)
    outcome = recipe.run(trainer, cfg, work_dir)

    if recipe.is_main_process():
        student = recipe.trained_model(trainer)
        teacher_metrics = evaluate_model(teacher, tokenizer, loaded, cfg.max_length, cfg.eval_batch_size)
        metrics, thresholds = evaluate_with_thresholds(student, student_tok, loaded, cfg.max_length,
                                                       cfg.eval_batch_size)
        teacher_profile = model_profile(teacher, cfg.max_length)
        student_profile = model_profile(student, cfg.max_length)
        delta = metric_delta(_summary(metrics.get("validation")), _summary(teacher_metrics.get("validation")))
        config = {"teacher": str(teacher_dir), **data.options(), **cfg.as_dict()}
        with artifact.create(out, "distill", format="pytorch", parent=teacher_dir, config=config) as art:
            save_model_artifact(art, student, student_tok)
            art.manifest.update(
                labels=labels, **task_record(loaded, thresholds), max_length=cfg.max_length, metrics=metrics, amp=amp,
                early_stopping=outcome,
                parameters=student_profile["parameters"], macs=student_profile["macs"],
                file_size=weights_size(art.dir),
                teacher={"path": str(Path(teacher_dir).absolute()), "metrics": teacher_metrics, **teacher_profile,
                         "layers": teacher_layers},
                student={"layers": student_layers, **origin, **student_profile},
                delta={"validation": delta} if delta else None,
                distillation={"temperature": cfg.temperature, "alpha": cfg.alpha, "hidden_weight": cfg.hidden_weight,
                              "attention_weight": cfg.attention_weight, "mixup_weight": cfg.mixup_weight,
                              "teacher_logits": mode,
                              "teacher_logits_seconds": cache_seconds,
                              "layer_map": layer_map if cfg.layer_losses else None},
                transfer=transfer,
                data={name: {"source": s.source, "rows": len(s), "skipped_empty": s.skipped_empty}
                      for name, s in loaded.splits.items()},
            )
        recipe.print_summary(f"distilled {out}", outcome, amp, metrics.get("validation"))
        print(compare_lines("teacher", teacher_profile, teacher_metrics.get("validation"),
                            "student", student_profile, metrics.get("validation")), flush=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    recipe.finish_distributed()
    return out


def compare_lines(name_a: str, profile_a: dict, metrics_a: dict | None,
                  name_b: str, profile_b: dict, metrics_b: dict | None) -> str:
    """Two models side by side: parameters, MACs and the validation main metric, with the ratio / difference."""
    acc = shown

    lines = [f"  {'':<10}{'parameters':>14}{'MACs/row':>16}{metric_label(main_metric_of(metrics_a or metrics_b)):>11}"]
    for name, p, m in ((name_a, profile_a, metrics_a), (name_b, profile_b, metrics_b)):
        lines.append(f"  {name:<10}{p['parameters']:>14,}{p['macs']:>16,}{acc(m):>11}")
    ratio_p = profile_b["parameters"] / max(1, profile_a["parameters"])
    ratio_m = profile_b["macs"] / max(1, profile_a["macs"])
    diff = f"{(main_value(metrics_b) - main_value(metrics_a)) * 100:+.2f} pt" if metrics_a and metrics_b else "n/a"
    lines.append(f"  {name_b + '/' + name_a:<10}{ratio_p:>14.2f}{ratio_m:>16.2f}{diff:>11}")
    return "\n".join(lines)
