"""Which early-stopping rule suits the teacher, replayed over whole training curves (issue 14's follow-up).

    python bench/bench_stopping.py --data runs/b18/sst2-5k --seeds 42,7 --out runs/b20/stopping

Trains the default teacher (`slimship train` defaults: the linear schedule over the 10-epoch ceiling) with early
stopping off, and after every epoch's validation it scores the same weights on the test split. The learning
rate's path does not depend on when training stops, so every stopping rule can be replayed exactly over the
recorded curve: the epochs it would run, the epoch it would keep (the best validation score so far, as the
Trainer keeps), and that epoch's test score. The rules replayed:

    patience P            the Trainer's: stop after P evaluations without a new best (P = 1, 2, 3)
    patience 2, 1 SE      a new best must beat the old by one standard error of the validation accuracy,
                          sqrt(a (1 - a) / n): about 1.7 points on 436 rows, 0.4 on 7,600
    patience 2, mean of 2 the rule reads the mean of the last two evaluations instead of the last one
    none                  all epochs, the best kept

Results go to OUT/curves.json and a markdown table on stdout. Classification data only (the rules read
accuracy).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def replay(curve: list[dict], patience: int | None, standard_errors: float = 0.0, smooth: int = 1,
           rows: int = 1) -> dict:
    """What a stopping rule would have done over one recorded curve ({"validation", "test", "seconds"} per epoch).

    Like transformers' EarlyStoppingCallback: an evaluation resets the wait only when it beats the best so far by
    more than the threshold, and the best so far follows every new maximum. The model kept is always the epoch
    with the highest validation score among those run."""
    best, wait, run = None, 0, len(curve)
    for i in range(len(curve)):
        window = [e["validation"] for e in curve[max(0, i - smooth + 1):i + 1]]
        score = sum(window) / len(window)
        threshold = 0.0
        if standard_errors and best is not None:
            threshold = standard_errors * math.sqrt(best * (1.0 - best) / rows)
        if best is None or score > best + threshold:
            wait = 0
        else:
            wait += 1
        best = score if best is None else max(best, score)
        if patience is not None and wait >= patience:
            run = i + 1
            break
    kept = max(range(run), key=lambda j: (curve[j]["validation"], -j))
    return {"epochs": run, "kept": kept + 1, "validation": curve[kept]["validation"], "test": curve[kept]["test"],
            "seconds": sum(e["seconds"] for e in curve[:run])}


RULES = {
    "patience 1": dict(patience=1),
    "patience 2 (default)": dict(patience=2),
    "patience 3": dict(patience=3),
    "patience 2, 1 SE": dict(patience=2, standard_errors=1.0),
    "patience 2, mean of 2": dict(patience=2, smooth=2),
    "none": dict(patience=None),
}


def record_curve(data: str, test, seed: int, out: Path) -> list[dict]:
    """Train the default teacher with early stopping off; validation and test accuracy after every epoch."""
    from transformers import TrainerCallback

    from slimship.core.config import DataConfig
    from slimship.train import recipe
    from slimship.train.models import load_tokenizer
    from slimship.train.recipe import TokenizedDataset, TrainConfig
    from slimship.train.stage import train

    cfg = TrainConfig(seed=seed, patience=0, quiet=True)
    test_set = TokenizedDataset(load_tokenizer("minilm"), test.inputs, test.labels, cfg.max_length)
    curve: list[dict] = []
    clock = [time.perf_counter()]

    class TestEachEpoch(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            import torch

            trained = time.perf_counter() - clock[0]           # the epoch and its validation pass
            # Iterating a DataLoader draws from torch's generator: restore it, or the test pass would change the
            # dropout of every later epoch and the curve would not be the plain run's.
            state_before = torch.get_rng_state()
            score = self.trainer.predict(test_set).metrics["test_accuracy"]
            torch.set_rng_state(state_before)
            curve.append({"epoch": round(state.epoch), "validation": metrics["eval_accuracy"], "test": score,
                          "seconds": round(trained, 1)})
            print(f"seed {seed} epoch {round(state.epoch)}: validation {metrics['eval_accuracy']:.4f} "
                  f"test {score:.4f} ({trained:.0f} s)", flush=True)
            clock[0] = time.perf_counter()

    build = recipe.build_trainer

    def with_test_scores(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(TestEachEpoch(trainer))
        return trainer

    recipe.build_trainer = with_test_scores
    try:
        train("minilm", out / f"teacher-{seed}", DataConfig(data), cfg)
    finally:
        recipe.build_trainer = build
    return curve


def table(curves: dict[int, list[dict]], rows: int) -> str:
    lines = ["| rule | " + " | ".join(f"seed {s}: epochs run (kept), validation / test" for s in curves)
             + " | mean test | mean seconds |",
             "|---|" + "---|" * len(curves) + "---:|---:|"]
    for name, rule in RULES.items():
        results = [replay(curve, rows=rows, **rule) for curve in curves.values()]
        cells = [f"{r['epochs']} ({r['kept']}), {r['validation'] * 100:.2f} / {r['test'] * 100:.2f}" for r in results]
        mean_test = sum(r["test"] for r in results) / len(results) * 100
        mean_seconds = sum(r["seconds"] for r in results) / len(results)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean_test:.2f} | {mean_seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a data dir with train, validation and test splits")
    parser.add_argument("--seeds", default="42,7")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from slimship.core.config import DataConfig
    from slimship.train.artifacts import load_stage_data

    splits = load_stage_data(DataConfig(args.data)).splits
    results = args.out / "curves.json"
    curves = {int(k): v for k, v in json.loads(results.read_text()).items()} if results.is_file() else {}
    for seed in (int(s) for s in args.seeds.split(",")):
        if seed not in curves:                   # a finished seed is kept: rerun to add seeds
            curves[seed] = record_curve(args.data, splits["test"], seed, args.out)
            results.write_text(json.dumps(curves, indent=1))
    print(table(curves, len(splits["validation"])))


if __name__ == "__main__":
    main()
