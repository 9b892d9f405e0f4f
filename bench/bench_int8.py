"""INT8 options side by side: accuracy, labels that change with the batching, batch-32 throughput, file size.

    python bench/bench_int8.py --model runs/teacher-onnx --data ../shared/datasets/sst2 --results bench/results/int8

--model is an unfused FP32 ONNX artifact (slimship export --optimize none). Every option quantizes it with
slimship.compress.quantize.write_int8 (the code the quantize stage runs), then every model sees the same
validation texts three ways, straight through ONNX Runtime so the batching is exactly what is described:
  b1        one text per call (no padding, no batch-mates)
  b32       consecutive batches of 32 in file order, each padded to its longest text
  b32-shuf  batches of 32 after a seeded shuffle (other batch-mates, other padding)
A "flip" is a text whose predicted label differs between two of those; max |dp| is the largest change of the
winning class's probability. Throughput: b32 in file order, the options taking turns pass by pass (the median
of --passes), on --threads intra-op threads; only ratios between options of one run are meaningful.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# name -> what write_int8 gets (mode, per_channel, method, op_types, exclude, accuracy_level)
OPTIONS = {
    "dynamic": dict(mode="dynamic"),
    "dynamic-per-channel": dict(mode="dynamic", per_channel=True),
    "static-minmax": dict(mode="static"),
    "static-pc-minmax": dict(mode="static", per_channel=True),
    "static-pc-percentile": dict(mode="static", per_channel=True, method="percentile"),
    "static-pc-entropy": dict(mode="static", per_channel=True, method="entropy"),
    "static-pc-minmax-matmul": dict(mode="static", per_channel=True, op_types=["MatMul"]),
    "static-pc-minmax-matmul-ffnout-fp32": dict(mode="static", per_channel=True, op_types=["MatMul"],
                                                exclude="ffn_out"),
    "static-pc-minmax-matmul-gather": dict(mode="static", per_channel=True, op_types=["MatMul", "Gather"]),
    "static-minmax-matmul": dict(mode="static", op_types=["MatMul"]),
    # Histogram calibration fails on the preset's full operator list with onnxruntime 1.32 ("Too many bins for
    # data range": a tensor with a zero range); on MatMul inputs only it has a chance.
    "static-pc-percentile-matmul": dict(mode="static", per_channel=True, method="percentile", op_types=["MatMul"]),
    "static-pc-entropy-matmul": dict(mode="static", per_channel=True, method="entropy", op_types=["MatMul"]),
    "static-default": dict(mode="static", defaults=True),    # what `slimship quantize --mode static` does
    "weight8": dict(mode="weight_only"),
    "weight8-int8compute": dict(mode="weight_only", accuracy_level=4),
    # The static default's small variants: each FFN output projection in 8-bit weights with int8 products per row
    # (ffn_output weight8), word embeddings in 4 bits (blocks of 32 or 128), or both (the search's -emb4-ffn8).
    "static-default-ffn8": dict(mode="static", defaults=True, ffn_output="weight8"),
    "static-default-emb4": dict(mode="static", defaults=True, embedding_bits=4),
    "static-default-emb4-b128": dict(mode="static", defaults=True, embedding_bits=4, embedding_block=128),
    "static-default-emb4-ffn8": dict(mode="static", defaults=True, embedding_bits=4, embedding_block=128,
                                     ffn_output="weight8"),
    # The static default with the attention products (Q x K^T, softmax x V) also kept FP32: measured, not adopted.
    "static-default-attn-fp32": dict(mode="static", defaults=True, attention_fp32=True),
    "static-default-emb4-attn-fp32": dict(mode="static", defaults=True, embedding_bits=4, embedding_block=128,
                                          attention_fp32=True),
}


def feeds_for(tokenizer, texts, input_names, max_length):
    """Right-padded int64 feeds for one call, padded to its longest text (as the serving runtime pads)."""
    # tokenizer.json pads a batch to its longest text itself: the encodings' own masks say which are padding.
    encodings = tokenizer.encode_batch(list(texts))
    rows = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings]}
    return {name: np.array(rows[name], dtype=np.int64) for name in input_names}


def probabilities(session, tokenizer, texts, input_names, max_length, batch, order=None):
    order = np.arange(len(texts)) if order is None else order
    probs = np.zeros((len(texts), 0))
    for start in range(0, len(texts), batch):
        rows = order[start:start + batch]
        logits = session.run(["logits"], feeds_for(tokenizer, [texts[i] for i in rows], input_names,
                                                   max_length))[0]
        if probs.shape[1] == 0:
            probs = np.zeros((len(texts), logits.shape[1]))
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probs[rows] = e / e.sum(-1, keepdims=True)
    return probs


def ffn_output_matmuls(model_file: Path) -> list[str]:
    """The second FFN MatMul of every layer (input: the GELU output, the widest-ranged activation in BERT), found
    by structure as the quantize stage finds it."""
    import onnx

    from slimship.compress.quantize import activation_fed_matmuls

    return activation_fed_matmuls(onnx.load(str(model_file), load_external_data=False))


def weightless_matmuls(model_file: Path) -> list[str]:
    """MatMuls of two activations (no weight on either side): a transformer's attention products, Q x K^T and
    softmax x V. Excluding one needs its name (Hugging Face exports name every node)."""
    import onnx

    model = onnx.load(str(model_file))
    constant = {i.name for i in model.graph.initializer}
    for node in model.graph.node:       # topological order: one pass finds weights computed from initializers
        if node.op_type == "Constant" or (node.input and all(i in constant for i in node.input if i)):
            constant.update(node.output)
    found = [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in constant for i in n.input)]
    if not all(found):
        raise ValueError(f"{model_file}: an attention MatMul has no name, so it cannot be excluded")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="unfused FP32 ONNX artifact")
    parser.add_argument("--data", required=True)
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated subset of: "
                        + ", ".join(OPTIONS))
    parser.add_argument("--calibration", type=int, default=128, help="training rows for static calibration")
    parser.add_argument("--rows", type=int, help="validation rows (default: all)")
    parser.add_argument("--throughput-rows", type=int, default=256)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="bench/results/int8")
    args = parser.parse_args()

    import onnxruntime as ort
    from tokenizers import Tokenizer

    from slimship.compress.quantize import (TokenizedRows, _input_names, cpu_preset, preset_settings,
                                            quantize_word_embeddings, quiet_root_logger, static_defaults,
                                            write_int8)
    from slimship.core import artifact
    from slimship.core.data import load_data

    model_dir = Path(args.model)
    manifest = artifact.load(model_dir, format="onnx")
    has_test = any(Path(args.data).glob("test.*"))
    data = load_data(args.data, labels=manifest["labels"],
                     splits=("train", "validation", "test") if has_test else ("train", "validation"))
    texts = data.splits["validation"].texts[:args.rows]
    labels = np.array(data.splits["validation"].labels[:args.rows])
    rng = np.random.default_rng(args.seed)
    calibration = [data.splits["train"].texts[i]
                   for i in rng.choice(len(data.splits["train"].texts), args.calibration, replace=False)]
    src = model_dir / "model.onnx"
    input_names = _input_names(src)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=manifest["max_length"])
    preset = cpu_preset()

    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    models = {"fp32": src}
    build_s, failed = {}, {}
    for name in args.options.split(","):
        spec = dict(OPTIONS[name])
        mode = spec.pop("mode")
        source = src
        if spec.pop("exclude", None) == "ffn_out":
            spec["nodes_to_exclude"] = ffn_output_matmuls(src)
        (work / f"{name}-pre").mkdir()
        block = spec.pop("embedding_block", 32)
        if spec.pop("embedding_bits", 8) == 4:
            quantize_word_embeddings(source, work / f"{name}-pre" / "emb4.onnx", block)
            source = work / f"{name}-pre" / "emb4.onnx"
        if spec.pop("defaults", False):
            source, defaults, _ = static_defaults(source, work / f"{name}-pre", preset, spec.pop("ffn_output", "fp32"))
            if spec.pop("attention_fp32", False):
                defaults["nodes_to_exclude"] = defaults["nodes_to_exclude"] + weightless_matmuls(source)
            spec.update(defaults)
        target = work / f"{name}.onnx"
        settings = preset_settings(preset, mode == "static", spec.get("per_channel", False))
        reader = TokenizedRows(model_dir, calibration, manifest["max_length"], input_names) \
            if mode == "static" else None
        started = time.perf_counter()
        try:
            with quiet_root_logger():
                (work / name).mkdir()     # its own calibration cache: a cache made by another method is refused
                write_int8(source, target, mode, settings, reader=reader, work_dir=work / name, **spec)
        except Exception as e:        # an option ONNX Runtime cannot build is a result too
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"FAILED {name}: {failed[name]}", flush=True)
            continue
        build_s[name] = round(time.perf_counter() - started, 1)
        models[name] = target
        print(f"built {name} in {build_s[name]} s", flush=True)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in models.items()}
    shuffled = np.random.default_rng(args.seed + 1).permutation(len(texts))
    results = {}
    for name, session in sessions.items():
        b1 = probabilities(session, tokenizer, texts, input_names, manifest["max_length"], 1)
        b32 = probabilities(session, tokenizer, texts, input_names, manifest["max_length"], 32)
        b32s = probabilities(session, tokenizer, texts, input_names, manifest["max_length"], 32, shuffled)

        def compare(a, b):
            la, lb = a.argmax(-1), b.argmax(-1)
            return {"flips": int((la != lb).sum()), "flip_pct": round(float((la != lb).mean() * 100), 3),
                    "max_abs_dp": float(np.abs(a[np.arange(len(a)), la] - b[np.arange(len(b)), la]).max())}

        results[name] = {
            "accuracy_b32": float((b32.argmax(-1) == labels).mean()),
            "accuracy_b1": float((b1.argmax(-1) == labels).mean()),
            "b1_vs_b32": compare(b1, b32), "b32_vs_shuffled": compare(b32, b32s),
            "agreement_with_fp32_b1": None, "file_mb": round(models[name].stat().st_size / 1e6, 2),
            "build_s": build_s.get(name), "_b1_labels": b1.argmax(-1),
        }
        if has_test:
            test = data.splits["test"]
            results[name]["test_accuracy_b32"] = float((probabilities(
                session, tokenizer, test.texts, input_names, manifest["max_length"], 32).argmax(-1)
                == np.array(test.labels)).mean())
        print(f"measured {name}: {results[name]['accuracy_b32'] * 100:.2f}%", flush=True)
    for name in results:
        results[name]["agreement_with_fp32_b1"] = float(
            (results[name].pop("_b1_labels") == results["fp32"]["_b1_labels"]).mean()) if name != "fp32" else 1.0
    results["fp32"].pop("_b1_labels", None)

    timing_texts = [texts[i % len(texts)] for i in range(args.throughput_rows)]
    batches = [feeds_for(tokenizer, timing_texts[i:i + 32], input_names, manifest["max_length"])
               for i in range(0, len(timing_texts), 32)]
    times = {name: [] for name in sessions}
    for name, session in sessions.items():
        session.run(["logits"], batches[0])   # warm-up
    for _ in range(args.passes):
        for name, session in sessions.items():
            started = time.perf_counter()
            for feeds in batches:
                session.run(["logits"], feeds)
            times[name].append(time.perf_counter() - started)
    fp32_rate = len(timing_texts) / float(np.median(times["fp32"]))
    for name in sessions:
        rate = len(timing_texts) / float(np.median(times[name]))
        results[name].update(throughput_rows_s_b32=round(rate, 1), speedup_vs_fp32=round(rate / fp32_rate, 2))

    fp32_acc = results["fp32"]["accuracy_b32"]
    header = f"{'option':<38} {'acc b32':>8} {'Δ pt':>6} {'flips b1/b32':>12} {'b32/shuf':>8} " \
             f"{'max|dp|':>8} {'rows/s':>7} {'x fp32':>6} {'MB':>6} {'test':>6}"
    print(header)
    for name, r in results.items():
        print(f"{name:<38} {r['accuracy_b32'] * 100:8.2f} {(r['accuracy_b32'] - fp32_acc) * 100:+6.2f} "
              f"{r['b1_vs_b32']['flips']:12d} {r['b32_vs_shuffled']['flips']:8d} "
              f"{max(r['b1_vs_b32']['max_abs_dp'], r['b32_vs_shuffled']['max_abs_dp']):8.1e} "
              f"{r['throughput_rows_s_b32']:7.0f} {r['speedup_vs_fp32']:6.2f} {r['file_mb']:6.1f} "
              f"{r.get('test_accuracy_b32', float('nan')) * 100:6.2f}")
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": str(model_dir), "data": args.data, "validation_rows": len(texts),
              "calibration_rows": args.calibration, "threads": args.threads, "passes": args.passes,
              "throughput_rows": len(timing_texts), "preset": preset, "results": results, "failed": failed}
    path = out / f"int8-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for name, why in failed.items():
        print(f"{name:<38} failed: {why}")
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
