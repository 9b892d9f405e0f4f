"""Small generated data sets for the three task shapes, learnable enough for the tiny model in a few epochs.

    pairs       text, text_pair, label: 1 when the second text praises, 0 when it pans
    multilabel  text, labels: the topics a sentence mentions, joined by ';'
    regression  text, text_pair, label: a score 0-5 set by the adjective of the second text

The signal of both pair sets is in the second text only, so a model that learns them must have read the pairs.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

TOPICS = {"sports": ["match", "goal", "team", "coach"], "music": ["song", "guitar", "concert", "drum"],
          "food": ["pizza", "soup", "bread", "cheese"]}
WORDS = [(topic, word) for topic, words in TOPICS.items() for word in words]


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


GOOD, BAD = ["great", "lovely", "superb", "wonderful"], ["awful", "dull", "poor", "boring"]
SCORED = {"superb": 5.0, "great": 4.5, "nice": 3.5, "okay": 2.5, "poor": 1.5, "dull": 0.5, "awful": 0.0}


def pair_rows(n: int, rng: random.Random) -> list[list]:
    rows = []
    for i in range(n):
        word = rng.choice(WORDS)[1]
        rows.append([f"we talked about the {word}", f"it was {rng.choice(GOOD if i % 2 else BAD)}", int(i % 2)])
    return rows


def multilabel_rows(n: int, rng: random.Random) -> list[list]:
    rows = []
    for _ in range(n):
        topics = sorted(rng.sample(list(TOPICS), rng.choice([1, 1, 2])))
        words = [rng.choice(TOPICS[t]) for t in topics]
        rows.append([f"today it was all about the {' and the '.join(words)}", ";".join(topics)])
    return rows


def regression_rows(n: int, rng: random.Random) -> list[list]:
    rows = []
    for _ in range(n):
        word, adjective = rng.choice(WORDS)[1], rng.choice(list(SCORED))
        rows.append([f"a story about the {word}", f"it was {adjective}", SCORED[adjective]])
    return rows


MAKERS = {"pairs": (["text", "text_pair", "label"], pair_rows),
          "multilabel": (["text", "labels"], multilabel_rows),
          "regression": (["text", "text_pair", "label"], regression_rows)}


def make_task_data(kind: str, directory: Path, train_rows: int = 240, eval_rows: int = 48, seed: int = 0) -> Path:
    """train/validation/test CSVs of ``kind`` in ``directory``."""
    header, make = MAKERS[kind]
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_rows), ("validation", eval_rows), ("test", eval_rows)):
        _write(directory / f"{split}.csv", header, make(n, rng))
    return directory
