"""The transfer set: augmented copies and unlabeled text, labelled by the teacher; hidden-state KD in recovery."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import slimship_cmd
from family_models import _tokenizer
from slimship.compress.augment import (WordVocabulary, augmented_texts, drop_words, embedding_neighbours,
                                       mask_span)
from slimship.compress.config import DistillConfig, PruneConfig
from slimship.core import artifact
from slimship.core.config import DataConfig
from slimship.core.errors import UserError

TEXTS = ["the movie was good and the acting was great", "a slow boring film", "great story , bad ending"]


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
def test_word_vocabulary_holds_whole_words_only_in_each_tokenizer_kind(family):
    tokenizer, _ = _tokenizer(family)
    vocab = WordVocabulary.of(tokenizer)
    assert len(vocab.ids) > 20
    special = set(tokenizer.all_special_ids)
    for word, token_id in vocab.ids.items():
        assert word.isalpha() or "'" in word
        assert token_id not in special
        # a whole word: encoded alone (as a word, not a continuation) it is that one token
        encoded = tokenizer(" " + word if family == "roberta" else word, add_special_tokens=False)["input_ids"]
        assert encoded == [token_id], (word, encoded)


def test_embedding_neighbours_are_the_nearest_by_cosine_and_never_the_word_itself():
    table = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float32)
    found = embedding_neighbours(table, [0, 2], [0, 1, 2, 3, 4], k=2)
    assert found[0] == [1, 3]
    assert found[2] == [3, 1]


def test_augmented_copies_are_deterministic_new_and_made_from_training_texts_only():
    tokenizer, _ = _tokenizer("bert")
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(len(tokenizer), 16)).astype(np.float32)
    first = augmented_texts(TEXTS, tokenizer, embeddings, copies=4, methods=["substitute", "mask", "drop"], seed=3)
    again = augmented_texts(TEXTS, tokenizer, embeddings, copies=4, methods=["substitute", "mask", "drop"], seed=3)
    other = augmented_texts(TEXTS, tokenizer, embeddings, copies=4, methods=["substitute", "mask", "drop"], seed=4)
    assert first == again and first != other
    assert 0 < len(first) <= 4 * len(TEXTS)
    assert not set(first) & set(TEXTS) and len(set(first)) == len(first)
    vocab = WordVocabulary.of(tokenizer)
    known = {w for t in TEXTS for w in t.split()} | set(vocab.ids) | {tokenizer.mask_token}
    for text in first:
        assert set(text.split()) <= known
    assert augmented_texts(TEXTS, tokenizer, embeddings, copies=0) == []
    with pytest.raises(ValueError):
        augmented_texts(TEXTS, tokenizer, embeddings, copies=1, methods=["shuffle"])


def test_pairs_get_both_sides_changed_deterministically():
    tokenizer, _ = _tokenizer("bert")
    embeddings = np.random.default_rng(0).normal(size=(len(tokenizer), 16)).astype(np.float32)
    pairs = [("the movie was good", "and the acting was great"), ("a slow boring film", "great story , bad ending")]
    first = augmented_texts(pairs, tokenizer, embeddings, copies=2, methods=["mask", "drop"], seed=1)
    assert first == augmented_texts(pairs, tokenizer, embeddings, copies=2, methods=["mask", "drop"], seed=1)
    assert first and all(isinstance(p, tuple) and len(p) == 2 for p in first)
    assert not set(first) & set(pairs)
    masked = first[0]                                   # copy 0 of the first pair: a span masked on each side
    assert "[MASK]" in masked[0] and "[MASK]" in masked[1]


def test_teacher_targets_take_each_tasks_form():
    from slimship.compress.distill import teacher_targets

    logits = np.array([[2.0, -1.0, 0.5], [-0.2, 0.1, -3.0]], dtype=np.float32)
    assert teacher_targets("classification", logits) == [0, 1]
    assert teacher_targets("multilabel", logits) == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert teacher_targets("regression", logits[:, :1]) == pytest.approx([2.0, -0.2])


def test_auto_augmentation_stops_above_ten_thousand_rows():
    """Auto means 2 copies for a few thousand rows and none for large sets (where it would triple the students'
    training time); an explicit --augment is always taken."""
    from slimship.compress.distill import AUTO_AUGMENT_MAX_ROWS, transfer_texts

    rows = ["some training text"] * (AUTO_AUGMENT_MAX_ROWS + 1)
    extra, counts = transfer_texts(None, None, rows, [], DistillConfig())
    assert extra == [] and counts["augment"] == 0
    tokenizer, _ = _tokenizer("bert")

    class Teacher:
        def get_input_embeddings(self):
            import torch

            return torch.nn.Embedding(len(tokenizer), 8)

    extra, counts = transfer_texts(Teacher(), tokenizer, TEXTS, [], DistillConfig())
    assert counts["augment"] == 2 and len(extra) > 0
    extra, counts = transfer_texts(Teacher(), tokenizer, rows[:50] + TEXTS, [], DistillConfig(augment=1,
                                                                                               augment_methods="mask"))
    assert counts["augment"] == 1


def test_mask_and_drop_keep_a_text_of_words():
    import random

    words = "one two three four".split()
    for seed in range(20):
        masked = mask_span(words, random.Random(seed), "[MASK]")
        assert len(masked) == 4 and 1 <= masked.count("[MASK]") <= 3
        dropped_span = mask_span(words, random.Random(seed), None)
        assert 1 <= len(dropped_span) < 4
        assert drop_words(words, random.Random(seed), 0.99)    # never empty
    assert mask_span(["alone"], random.Random(0), "[MASK]") == ["alone"]


def test_transfer_options_refuse_bad_values(tmp_path):
    with pytest.raises(UserError, match="augment-methods"):
        DistillConfig(augment_methods="substitute,shuffle").check()
    with pytest.raises(UserError, match="augment"):
        DistillConfig(augment=-1).check()
    with pytest.raises(UserError, match="no such file"):
        DistillConfig(unlabeled=str(tmp_path / "missing.csv")).check()
    with pytest.raises(UserError, match="no such file"):
        PruneConfig(heads=0.5, unlabeled=str(tmp_path / "missing.csv")).check()


def test_extra_texts_take_the_teachers_label_never_a_copied_one(tiny_teacher, demo_data):
    from slimship.compress.distill import kd_train_set
    from slimship.train.artifacts import load_pytorch_artifact, predict_logits

    _, teacher, tokenizer = load_pytorch_artifact(tiny_teacher)
    cfg = DistillConfig(max_length=32)
    extra = ["a new sentence the teacher labels", "another one", "and a third"]
    dataset, _ = kd_train_set(teacher, tokenizer, TEXTS, [0, 1, 0], cfg, "cache", extra)
    assert len(dataset) == 6
    expected = predict_logits(teacher, tokenizer, extra, 32).argmax(-1).tolist()
    assert [dataset[i]["labels"] for i in range(3, 6)] == expected
    assert [dataset[i]["labels"] for i in range(3)] == [0, 1, 0]
    assert np.allclose(dataset[4]["teacher_logits"], predict_logits(teacher, tokenizer, extra[1:2], 32)[0], atol=1e-5)


def test_the_teachers_answers_are_remembered_for_the_same_transfer_set(tiny_teacher, capsys):
    """Distillation and the pruning recovery after it label the same transfer set: the second stage reuses the
    first's answers (same teacher, same inputs) and gets exactly the logits it would compute."""
    from slimship.compress.distill import kd_train_set
    from slimship.train.artifacts import load_pytorch_artifact

    _, teacher, tokenizer = load_pytorch_artifact(tiny_teacher)
    cfg = DistillConfig(max_length=32)
    key = artifact.manifest_digest(tiny_teacher)
    first, _ = kd_train_set(teacher, tokenizer, TEXTS, [0, 1, 0], cfg, "cache", ["an extra text"], teacher_key=key)
    capsys.readouterr()
    again, _ = kd_train_set(teacher, tokenizer, TEXTS, [0, 1, 0], cfg, "cache", ["an extra text"], teacher_key=key)
    assert "reused" in capsys.readouterr().err
    assert [again[i]["teacher_logits"] for i in range(4)] == [first[i]["teacher_logits"] for i in range(4)]
    kd_train_set(teacher, tokenizer, TEXTS, [0, 1, 0], cfg, "cache", ["another text"], teacher_key=key)
    assert "reused" not in capsys.readouterr().err              # other inputs: computed


@pytest.fixture(scope="module")
def unlabeled_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("unlabeled") / "more.jsonl"
    rows = [{"text": f"an unlabeled review number {i} that was quite good"} for i in range(40)] + [{"text": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_distill_with_augmentation_and_unlabeled_text_counts_them(tiny_teacher, demo_data, unlabeled_file, tmp_path):
    from slimship.compress.distill import distill

    cfg = DistillConfig(layers=1, epochs=1, learning_rate=1e-3, max_length=32, quiet=True, patience=0,
                        augment=2, augment_methods="substitute,drop", unlabeled=str(unlabeled_file))
    out = distill(tiny_teacher, tmp_path / "student", DataConfig(str(demo_data), max_train_rows=200), cfg)
    transfer = artifact.load(out)["transfer"]
    assert transfer["labelled"] == 200 and transfer["unlabeled"] == 40
    assert 200 < transfer["augmented"] <= 400 and transfer["methods"] == "substitute,drop"


def test_prune_recovery_distils_hidden_states_and_the_transfer_set(tiny_teacher, demo_data, tmp_path):
    from slimship.compress.prune import prune

    cfg = PruneConfig(heads=0.5, ffn=0.5, recovery_epochs=1, learning_rate=1e-3, max_length=32, quiet=True,
                      patience=0, teacher=str(tiny_teacher), hidden_weight=1.0, augment=1, importance_batches=2)
    out = prune(tiny_teacher, tmp_path / "pruned", DataConfig(str(demo_data), max_train_rows=96, max_eval_rows=64),
                cfg)
    manifest = artifact.load(out)
    assert manifest["transfer"]["augmented"] > 0
    assert manifest["pruning"]["steps"][0]["recovery"]["steps"] > 0
    with pytest.raises(UserError, match="hidden size"):
        prune(tiny_teacher, tmp_path / "bad", DataConfig(str(demo_data), max_train_rows=160),
              PruneConfig(hidden=0.5, teacher=str(tiny_teacher), hidden_weight=1.0, quiet=True))


def test_unlabeled_file_errors_are_one_line(tiny_teacher, demo_data, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("body\nsome text\n")
    for path, message in ((tmp_path / "none.csv", "no such file"), (bad, "text")):
        result = subprocess.run(slimship_cmd("distill", "--teacher", str(tiny_teacher), "--data", str(demo_data),
                                             "--out", str(tmp_path / "s"), "--unlabeled", str(path), "--layers", "1",
                                             "--quiet"),
                                capture_output=True, text=True)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_attention_kl_is_zero_for_the_same_maps_and_ignores_padded_queries():
    import torch

    from slimship.compress.distill import attention_kl

    torch.manual_seed(0)
    teacher = [torch.softmax(torch.randn(2, 4, 5, 5), -1) for _ in range(3)]
    student = [torch.softmax(torch.randn(2, 4, 5, 5), -1) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    layer_map = [(0, 0), (1, 1), (2, 3)]           # the embedding pair has no attention and is skipped
    assert float(attention_kl(teacher, teacher, [(0, 0), (1, 1), (3, 3)], mask)) == pytest.approx(0.0, abs=1e-6)
    loss = attention_kl(student, teacher, layer_map, mask)
    assert float(loss) > 0
    # padded query rows carry no weight: changing them changes nothing
    changed = [s.clone() for s in student]
    changed[0][0, :, 3:] = torch.softmax(torch.randn(4, 2, 5), -1)
    assert float(attention_kl(changed, teacher, layer_map, mask)) == pytest.approx(float(loss), rel=1e-6)
    # a pruned student with fewer heads is compared on head-averaged maps
    pruned = [s[:, :2] for s in student]
    assert float(attention_kl(pruned, teacher, layer_map, mask)) >= 0


def test_distil_and_recover_with_the_attention_loss(tiny_teacher, demo_data, tmp_path):
    from slimship.compress.distill import distill
    from slimship.compress.prune import prune

    cfg = DistillConfig(layers=[0], max_steps=4, max_length=32, quiet=True, patience=0, attention_weight=1.0,
                        hidden_weight=0.5)
    student = distill(tiny_teacher, tmp_path / "student", DataConfig(str(demo_data), max_train_rows=64), cfg)
    record = artifact.load(student)["distillation"]
    assert record["attention_weight"] == 1.0 and record["teacher_logits"] == "online"
    assert record["layer_map"] == [[0, 0], [1, 1]]
    pruned = prune(student, tmp_path / "pruned", DataConfig(str(demo_data), max_train_rows=64, max_eval_rows=32),
                   PruneConfig(heads=0.5, recovery_epochs=1, max_length=32, quiet=True, patience=0,
                               teacher=str(tiny_teacher), attention_weight=1.0, importance_batches=2))
    assert artifact.load(pruned)["pruning"]["steps"][0]["recovery"]["steps"] > 0
    with pytest.raises(UserError, match="attention-weight"):
        DistillConfig(attention_weight=-1).check()


def test_recovery_from_the_models_own_parent_matches_layer_by_layer(tiny_teacher, demo_data, tmp_path):
    """A student copied from the teacher's second layer (index 1) keeps that index in its manifest. Recovering it
    with itself, a one-layer model, as the teacher must pair its one layer with the teacher's one layer, not look
    for a second layer there."""
    from slimship.compress.distill import distill
    from slimship.compress.prune import kd_recovery_options, prune
    from slimship.train.artifacts import load_pytorch_artifact

    data = DataConfig(str(demo_data), max_train_rows=64, max_eval_rows=32)
    student = distill(tiny_teacher, tmp_path / "student", data,
                      DistillConfig(layers=[1], max_steps=2, max_length=32, quiet=True, patience=0))
    assert artifact.load(student)["student"]["kept_layers"] == [1]
    source, model, _ = load_pytorch_artifact(student)
    options = kd_recovery_options(source, model, model, PruneConfig(ffn=0.5, hidden_weight=1.0))
    assert options["layer_map"] == [(0, 0), (1, 1)]
    pruned = prune(student, tmp_path / "pruned", data,
                   PruneConfig(ffn=0.5, recovery_epochs=1, max_length=32, quiet=True, patience=0,
                               teacher=str(student), hidden_weight=1.0, importance_batches=2))
    assert artifact.load(pruned)["pruning"]["steps"][0]["recovery"]["steps"] > 0


def test_mixup_plan_is_a_seeded_shuffle_with_weights_toward_each_row():
    import torch

    from slimship.compress.distill import mixup_plan

    torch.manual_seed(3)
    partner, weight = mixup_plan(16)
    torch.manual_seed(3)
    again = mixup_plan(16)
    assert torch.equal(partner, again[0]) and torch.equal(weight, again[1])
    assert sorted(partner.tolist()) == list(range(16))
    assert bool(((weight >= 0.5) & (weight <= 1.0)).all())


def test_mixed_logits_mix_word_embeddings_row_by_row(tiny_teacher):
    import torch

    from slimship.compress.distill import mixed_logits
    from slimship.train.artifacts import load_pytorch_artifact

    _, model, tokenizer = load_pytorch_artifact(tiny_teacher)
    model.eval()
    batch = tokenizer(["a good film", "a bad plot"], return_tensors="pt")   # the same length: no padding
    assert bool(batch["attention_mask"].all())
    with torch.no_grad():
        plain = model(**batch).logits
        keep = torch.tensor([0, 1])
        # weight 1 is each row itself
        assert torch.allclose(mixed_logits(model, dict(batch), keep, torch.ones(2)), plain, atol=1e-6)
        # half and half with the other row: both rows see the same mix, so the same answer
        both = mixed_logits(model, dict(batch), torch.tensor([1, 0]), torch.full((2,), 0.5))
        assert torch.allclose(both[0], both[1], atol=1e-6) and not torch.allclose(both, plain, atol=1e-4)
    # a longer partner's tokens are attended to: the mask is the union of both rows'
    padded = tokenizer(["a good film", "a much slower and longer plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        mixed = mixed_logits(model, dict(padded), torch.tensor([1, 0]), torch.full((2,), 0.75))
    assert mixed.shape == (2, model.config.num_labels) and bool(torch.isfinite(mixed).all())


def test_distil_and_recover_with_mixup(tiny_teacher, demo_data, tmp_path, capsys):
    from slimship.compress.distill import check_mixup, distill
    from slimship.compress.prune import prune
    from slimship.train import families

    data = DataConfig(str(demo_data), max_train_rows=64, max_eval_rows=32)
    student = distill(tiny_teacher, tmp_path / "student", data,
                      DistillConfig(layers=[0], max_steps=4, max_length=32, quiet=True, patience=0,
                                    mixup_weight=1.0, augment=0))
    record = artifact.load(student)["distillation"]
    assert record["mixup_weight"] == 1.0 and record["teacher_logits"] == "cache"
    plain = distill(tiny_teacher, tmp_path / "plain", data,
                    DistillConfig(layers=[0], max_steps=4, max_length=32, quiet=True, patience=0, augment=0))
    # the same seed and batches: only the mixed term makes the weights differ
    assert (student / "model.safetensors").read_bytes() != (plain / "model.safetensors").read_bytes()
    pruned = prune(student, tmp_path / "pruned", data,
                   PruneConfig(ffn=0.5, recovery_epochs=1, max_length=32, quiet=True, patience=0,
                               teacher=str(tiny_teacher), mixup_weight=1.0, importance_batches=2, augment=0))
    assert artifact.load(pruned)["pruning"]["steps"][0]["recovery"]["steps"] > 0
    capsys.readouterr()
    prune(student, tmp_path / "no-teacher", data, PruneConfig(ffn=0.5, recovery_epochs=1, max_length=32, quiet=True,
                                                              patience=0, mixup_weight=1.0, importance_batches=2))
    assert "--mixup-weight needs one" in capsys.readouterr().err
    with pytest.raises(UserError, match="mixup-weight"):
        DistillConfig(mixup_weight=-1).check()
    with pytest.raises(UserError, match="last token"):
        check_mixup(DistillConfig(mixup_weight=1.0), families.FAMILIES["gpt2"])
    with pytest.raises(UserError, match="own"):
        check_mixup(DistillConfig(mixup_weight=1.0), families.FAMILIES["bert"], own_tokenizer=object())
