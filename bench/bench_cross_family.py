"""Cross-family distillation on real data (issue 16, benchmark a): the fine-tuned MiniLM teacher into a student of
another family with its own tokenizer, against the same-family layer-dropped student.

    python bench/bench_cross_family.py --teacher runs/b14/sst2-base/teacher --data runs/b14/sst2-5k \
        --same runs/b14/sst2-base/compress/candidates/L3 --out runs/b16/cross [--unlabeled more.csv]

Only the MiniLM checkpoint exists offline, so the other-family student starts at random: a 4-block RoBERTa
(hidden 256, 4 heads, FFN 1024) with a byte-level BPE tokenizer of 8,000 pieces trained on the training split's
texts only. It learns from the teacher's soft targets per text (`slimship distill --student DIR`: the teacher
reads its WordPiece tokens, the student its BPE tokens), on the default transfer set (the labelled rows and 2
augmented copies each) plus --unlabeled text when given. Both students are exported to ONNX and measured the same
way: validation and test accuracy, file size, batch-32 throughput (slimship's runtime, 2 threads,
bench_headline.py's protocol: the models take turns, median of --repeats passes). Results go to
OUT/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from bench_headline import timed_side_by_side


def build_student(out: Path, texts: list[str], labels: list[str], vocab_size: int = 8000, seed: int = 0) -> Path:
    """A random RoBERTa-shaped checkpoint and its byte-level BPE tokenizer, trained on ``texts``."""
    import torch
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    hf = T.RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                sep_token="</s>", cls_token="<s>", pad_token="<pad>", mask_token="<mask>")
    config = T.RobertaConfig(vocab_size=len(hf), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=1024, max_position_embeddings=130, type_vocab_size=1,
                             pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=len(labels),
                             id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(seed)
    model = T.AutoModelForSequenceClassification.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    hf.save_pretrained(out)
    return out


def split_rows(data: Path, name: str) -> tuple[list[str], list[str]]:
    with open(data / f"{name}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def measured_row(name: str, onnx_dir: Path, data: Path, threads: int) -> dict:
    """Accuracy per split and size of an ONNX student, and its logits function for the side-by-side timing."""
    from slimship.compress.export import onnx_file_mb
    from slimship.core.runtime import Classifier

    clf = Classifier(onnx_dir, threads=threads)
    row = {"name": name, "file_mb": onnx_file_mb(onnx_dir / "model.onnx"), "logits": clf.logits}
    for split in ("validation", "test"):
        if (data / f"{split}.csv").is_file():
            texts, truth = split_rows(data, split)
            predicted = [r["label"] for r in clf.predict(texts)]
            row[f"{split}_accuracy"] = sum(p == str(t) for p, t in zip(predicted, truth)) / len(truth)
    return row


def main() -> int:
    from slimship.compress.config import DistillConfig, ExportConfig
    from slimship.compress.distill import distill
    from slimship.compress.export import export
    from slimship.core import artifact
    from slimship.core.config import DataConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the fine-tuned MiniLM teacher (PyTorch artifact)")
    parser.add_argument("--same", required=True, help="the same-family student to compare (PyTorch artifact)")
    parser.add_argument("--data", required=True, help="a directory with train/validation[/test].csv")
    parser.add_argument("--out", required=True)
    parser.add_argument("--unlabeled", help="in-domain text without labels, for the cross-family student")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=5e-4,
                        help="a student from random weights needs a larger rate than one copied from the teacher")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model, the models taking turns")
    args = parser.parse_args()
    out, data = Path(args.out), Path(args.data)
    labels = artifact.load(args.teacher)["labels"]

    started = time.time()
    student_dir = build_student(out / "roberta-init", split_rows(data, "train")[0], labels)
    cfg = DistillConfig(student=str(student_dir), epochs=args.epochs, learning_rate=args.learning_rate,
                        unlabeled=args.unlabeled, quiet=True, patience=0)
    cross = out / "roberta-student"
    if not (cross / "manifest.json").is_file():
        distill(args.teacher, cross, DataConfig(str(data)), cfg)
    distill_seconds = round(time.time() - started, 1)
    rows = []
    for name, model in (("same family: MiniLM, 3 of the teacher's layers", Path(args.same)),
                        ("other family: RoBERTa 4x256 from random, own BPE tokenizer", cross)):
        onnx = out / f"{model.name}-onnx"
        if not (onnx / "manifest.json").is_file():
            export(model, onnx, DataConfig(str(data)), ExportConfig())
        manifest = artifact.load(model)
        rows.append({"model": str(model), "parameters": manifest.get("parameters"),
                     "transfer": manifest.get("transfer"), **measured_row(name, onnx, data, args.threads)})
    timed_side_by_side(rows, split_rows(data, "validation")[0][:512], latency_rows=50, repeats=args.repeats)
    rows = {r.pop("name"): {k: v for k, v in r.items() if k not in ("logits", "passes")} for r in rows}
    teacher_metrics = artifact.load(args.teacher)["metrics"]
    result = {"teacher": {k: (teacher_metrics.get(k) or {}).get("accuracy") for k in ("validation", "test")},
              "rows": rows, "cross_distill_seconds": distill_seconds, "epochs": args.epochs,
              "learning_rate": args.learning_rate, "unlabeled": args.unlabeled}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    t = result["teacher"]
    print(f"teacher: validation {t['validation']:.2%}, test {t['test']:.2%}" if t["test"] else
          f"teacher: validation {t['validation']:.2%}")
    print("| student | parameters | validation | test | MB | rows/s @32 |\n|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['parameters']:,} | {r['validation_accuracy']:.2%} | "
              f"{r.get('test_accuracy', float('nan')):.2%} | {r['file_mb']:.1f} | {r['throughput_rows_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
