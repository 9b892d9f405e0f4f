"""Make the small-data benchmark sets of issue 14: a deterministic sample of N training rows, and a test split.

    python bench/sample_data.py --data ../shared/datasets/sst2 --train-rows 5000 --out runs/b14/sst2-5k
    python bench/sample_data.py --data ../shared/datasets/ag_news --out runs/b14/agnews

Training rows: the first N after a seeded shuffle (random.Random(seed)), so a run is repeatable and the sample is
not biased by the file's order. SST-2 publishes no test labels; when the source has no test split the validation
rows are shuffled with the same seed and halved into validation and test, so the search selects on one half and
the report checks the other. CSV in, CSV out; columns untouched.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.csv, validation.csv[, test.csv]")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-rows", type=int, default=0, help="0 keeps every training row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    columns, train = read_rows(args.data / "train.csv")
    random.Random(args.seed).shuffle(train)
    if args.train_rows:
        train = train[:args.train_rows]
    write_rows(args.out / "train.csv", columns, train)
    columns, validation = read_rows(args.data / "validation.csv")
    if (args.data / "test.csv").is_file():
        test_columns, test = read_rows(args.data / "test.csv")
    else:
        random.Random(args.seed).shuffle(validation)
        half = len(validation) // 2
        validation, test, test_columns = validation[:half], validation[half:], columns
    write_rows(args.out / "validation.csv", columns, validation)
    write_rows(args.out / "test.csv", test_columns, test)
    for extra in ("labels.txt",):
        if (args.data / extra).is_file():
            (args.out / extra).write_text((args.data / extra).read_text())
    print(f"{args.out}: train {len(train)}, validation {len(validation)}, test {len(test)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
