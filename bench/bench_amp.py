"""Training speed: fp32 vs AMP (bf16 autocast on CPU) for `minilm` on SST-2 rows, side by side in one run.

Each round trains the same model for the same steps through slimship's own Trainer set-up (train/recipe.py),
alternating fp32 and AMP rounds so machine drift hits both alike; the result is the median ratio.

    python bench/bench_amp.py [--rows 2048] [--steps 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slimship.core.data import load_data  # noqa: E402
from slimship.train import recipe  # noqa: E402
from slimship.train.models import load_classifier, load_tokenizer  # noqa: E402
from slimship.train.config import TrainConfig  # noqa: E402
from slimship.train.recipe import TokenizedDataset  # noqa: E402


def steps_per_second(amp: str, data, tokenizer, steps: int, batch_size: int, max_length: int) -> float:
    model = load_classifier("minilm", data.labels)
    train = data.splits["train"]
    dataset = TokenizedDataset(tokenizer, train.texts, train.labels, max_length)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, max_length=max_length, patience=0, quiet=True,
                      learning_rate=3e-5)
    with tempfile.TemporaryDirectory() as work:
        trainer = recipe.build_trainer(model, tokenizer, dataset, None, cfg, Path(work), data.labels, amp)
        trainer.args.save_strategy = "no"
        started = time.perf_counter()
        trainer.train()
        return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "sst2"))
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()

    amp = recipe.resolve_amp("auto")
    if amp == "off":
        print("this CPU has no native bf16: AMP auto resolves to off, nothing to compare")
        return
    data = load_data(args.data, max_train_rows=args.rows, splits=("train",))
    tokenizer = load_tokenizer("minilm")
    results = {"off": [], amp: []}
    for round_ in range(args.rounds):
        for mode in ("off", amp):
            rate = steps_per_second(mode, data, tokenizer, args.steps, args.batch_size, args.max_length)
            results[mode].append(rate)
            print(f"round {round_ + 1}: {mode:>4}  {rate:.2f} steps/s", flush=True)
    ratios = [a / f for a, f in zip(results[amp], results["off"])]
    print()
    print(f"| mode | steps/s (median of {args.rounds}) | speed-up |")
    print("|---|---|---|")
    print(f"| fp32 | {statistics.median(results['off']):.2f} | 1.00x |")
    print(f"| {amp} AMP | {statistics.median(results[amp]):.2f} | {statistics.median(ratios):.2f}x |")


if __name__ == "__main__":
    main()
