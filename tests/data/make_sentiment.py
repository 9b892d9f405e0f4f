"""Writes tests/data/sentiment/{train,validation}.csv: templated review sentences for the tests.

A tiny random model learns them in seconds, which keeps the test suite fast; the demo uses real data instead
(examples/sentiment, UCI Sentiment Labelled Sentences).

Short product/film/restaurant reviews composed from hand-written fragments. A fixed seed keeps the files
stable; run it again only to change the set.
"""

import csv
import random
from pathlib import Path

SUBJECTS = ["the film", "this movie", "the sequel", "the soundtrack", "the plot", "the acting", "the ending",
            "the restaurant", "the soup", "the service", "our waiter", "the dessert", "this laptop",
            "the battery", "the screen", "the keyboard", "this phone", "the camera", "the hotel room",
            "the staff", "the book", "the last chapter", "the album", "the concert", "the game",
            "the new update", "the app", "the delivery", "the checkout", "the museum tour"]
POSITIVE = ["was wonderful", "is a delight", "felt fresh and clever", "exceeded every expectation",
            "was warm and funny", "is genuinely moving", "works beautifully", "was fast and friendly",
            "is worth every penny", "left me smiling", "was crisp and bright", "is a real joy",
            "was thoughtful and kind", "keeps getting better", "was simply excellent", "is charming",
            "was superb from start to finish", "made the evening", "is brilliantly done", "was a pleasant surprise"]
NEGATIVE = ["was dreadful", "is a chore", "felt stale and lazy", "fell far short", "was cold and rude",
            "is painfully dull", "breaks all the time", "was slow and careless", "is a waste of money",
            "left me annoyed", "was blurry and dim", "is a real letdown", "was sloppy and rushed",
            "keeps getting worse", "was simply awful", "is tedious", "was a mess from start to finish",
            "ruined the evening", "is badly made", "was an unpleasant surprise"]
POS_TAILS = ["", "", " and I would go back", ", highly recommended", ", I loved it", " and the price was fair",
             ", ten out of ten", " and I told all my friends"]
NEG_TAILS = ["", "", " and I will not go back", ", avoid it", ", I hated it", " and the price was absurd",
             ", two out of ten", " and I asked for a refund"]
HEDGES = ["", "", "", "honestly, ", "to be fair, ", "overall, ", "frankly, ", "in the end, "]


def sentence(rng: random.Random, positive: bool) -> str:
    verbs, tails = (POSITIVE, POS_TAILS) if positive else (NEGATIVE, NEG_TAILS)
    text = f"{rng.choice(HEDGES)}{rng.choice(SUBJECTS)} {rng.choice(verbs)}{rng.choice(tails)}."
    if rng.random() < 0.25:  # a contrast clause: the second half carries the verdict
        other = POSITIVE if not positive else NEGATIVE
        text = f"{rng.choice(SUBJECTS)} {rng.choice(other)}, but {text}"
    return text[0].upper() + text[1:]


def main() -> None:
    rng = random.Random(7)
    rows, seen = [], set()
    while len(rows) < 1600:
        label = rng.random() < 0.5
        text = sentence(rng, label)
        if text not in seen:
            seen.add(text)
            rows.append((text, "positive" if label else "negative"))
    out = Path(__file__).parent / "sentiment"
    out.mkdir(exist_ok=True)
    for name, part in (("train", rows[:1400]), ("validation", rows[1400:])):
        with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)


if __name__ == "__main__":
    main()
