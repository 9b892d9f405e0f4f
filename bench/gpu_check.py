"""GPU check: fp16 AMP with gradient scaling on CUDA, and its speed-up over fp32. Skips cleanly without CUDA.

Trains `minilm` for a few steps through slimship's Trainer set-up in fp32 and in the mode `--amp auto` picks on
this GPU (fp16 + GradScaler, or bf16 where supported), then forces fp16 to check the scaler is really in use
and the loss stays finite.

    python bench/gpu_check.py [--steps 40] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("SKIP: no CUDA GPU here; run this where one is available")
        return 0

    from slimship.core.data import LabelledData, Split
    from slimship.train import recipe
    from slimship.train.models import load_classifier, load_tokenizer
    from slimship.train.config import TrainConfig
    from slimship.train.recipe import TokenizedDataset

    texts = [f"sample sentence number {i} that is {'good' if i % 2 else 'bad'} " * 6 for i in range(4096)]
    data = LabelledData(labels=["neg", "pos"], splits={"train": Split(texts, [i % 2 for i in range(4096)], "synthetic")})
    tokenizer = load_tokenizer("minilm")
    dataset = TokenizedDataset(tokenizer, texts, data.splits["train"].labels, args.max_length)

    def run(amp: str):
        model = load_classifier("minilm", data.labels)
        cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                          patience=0, quiet=True)
        with tempfile.TemporaryDirectory() as work:
            trainer = recipe.build_trainer(model, tokenizer, dataset, None, cfg, Path(work), data.labels, amp)
            trainer.args.save_strategy = "no"
            torch.cuda.synchronize()
            started = time.perf_counter()
            result = trainer.train()
            torch.cuda.synchronize()
            scaler = getattr(trainer.accelerator, "scaler", None)
            return args.steps / (time.perf_counter() - started), result.training_loss, scaler

    auto = recipe.resolve_amp("auto")
    print(f"GPU: {torch.cuda.get_device_name(0)}; --amp auto resolves to {auto}")
    fp32, loss32, _ = run("off")
    fp16, loss16, scaler = run("fp16")
    print(f"fp32: {fp32:.2f} steps/s (loss {loss32:.4f})")
    print(f"fp16: {fp16:.2f} steps/s (loss {loss16:.4f}), GradScaler in use: {scaler is not None}")
    print(f"fp16 speed-up: {fp16 / fp32:.2f}x")
    ok = scaler is not None and math.isfinite(loss16)
    if auto != "fp16":
        rate, loss, _ = run(auto)
        print(f"{auto}: {rate:.2f} steps/s (loss {loss:.4f}), speed-up {rate / fp32:.2f}x")
        ok = ok and math.isfinite(loss)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
