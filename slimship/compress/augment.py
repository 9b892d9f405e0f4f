"""The transfer set: more text for a student to learn its teacher from, made from the training texts.

    extra = augmented_texts(train_texts, tokenizer, embeddings, copies=4, methods=("substitute", "mask"), seed=42)

A student learns the teacher's function only where it sees the teacher's answers. A few thousand labelled rows
show it too little of that function (a 3-layer MiniLM student distilled from 5,000 SST-2 rows lands 1.5-3 points
under its teacher); TinyBERT closes much of such gaps by distilling on augmented copies of the training texts.
Each copy changes one thing:

    method      what a copy gets                                          why
    substitute  ~30% of its words swapped for a near neighbour in the      TinyBERT's word replacement, with the
                teacher's own input-embedding space (whole words only)    teacher's embeddings in place of GloVe
    mask        a span of 1-3 words replaced by the mask token (dropped   the teacher's answer without part of
                when the tokenizer has none)                              the evidence
    drop        ~15% of its words left out                                shorter, noisier phrasings

A sentence pair (a (text, text_pair) tuple) gets the copy's method on both of its sides, each with its own
random draws. The teacher labels every augmented input (soft targets, computed once; distill.kd_train_set); the
original's label is never copied, since a substitution can change the meaning (or a pair's score). Only training
inputs are read, so nothing of the validation or test splits reaches the student. Inputs equal to an original or
to an earlier copy are left out. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

METHODS = ("substitute", "mask", "drop")
WORD = re.compile(r"^[A-Za-z][A-Za-z']*$")


@dataclass
class WordVocabulary:
    """The tokenizer's whole-word tokens: surface form -> token id, and the id's surface form."""

    ids: dict[str, int]
    words: dict[int, str]
    lowercase: bool

    @classmethod
    def of(cls, tokenizer) -> "WordVocabulary":
        """Whole words are tokens that start a word and hold only letters, in each tokenizer kind's spelling:
        WordPiece continuations start with ##, byte-level BPE word starts with Ġ, SentencePiece's with ▁."""
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_ids)
        tokens = list(vocab)
        marker = next((m for m in ("Ġ", "▁") if sum(t.startswith(m) for t in tokens) > len(tokens) // 10), None)
        ids, words = {}, {}
        for token, token_id in vocab.items():
            if token_id in special:
                continue
            if marker is not None:
                if not token.startswith(marker):
                    continue
                token = token[len(marker):]
            if len(token) < 2 or not WORD.match(token):
                continue
            ids.setdefault(token, token_id)
            words[token_id] = token
        lowercase = bool(getattr(tokenizer, "do_lower_case", False)) or all(w == w.lower() for w in ids)
        return cls(ids, words, lowercase)

    def id_of(self, word: str) -> int | None:
        return self.ids.get(word.lower() if self.lowercase else word, self.ids.get(word))


def embedding_neighbours(embeddings: np.ndarray, query_ids: list[int], candidate_ids: list[int],
                         k: int = 8, chunk: int = 1024) -> dict[int, list[int]]:
    """The k candidates nearest (cosine) to each query id in the embedding table, the id itself left out."""
    table = np.asarray(embeddings, dtype=np.float32)
    candidates = np.asarray(candidate_ids)
    cand = table[candidates]
    cand = cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-12)
    found: dict[int, list[int]] = {}
    for start in range(0, len(query_ids), chunk):
        queries = np.asarray(query_ids[start:start + chunk])
        q = table[queries]
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sims = q @ cand.T
        sims[candidates[None, :] == queries[:, None]] = -np.inf
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        for row, query in enumerate(queries):
            best = top[row][np.argsort(-sims[row, top[row]])]
            found[int(query)] = [int(candidates[j]) for j in best]
    return found


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def substitute(words: list[str], rng: random.Random, vocab: WordVocabulary, neighbours: dict[int, list[int]],
               rate: float) -> list[str]:
    out = []
    for word in words:
        token_id = vocab.id_of(word) if WORD.match(word) else None
        options = neighbours.get(token_id) if token_id is not None else None
        if options and rng.random() < rate:
            out.append(_match_case(vocab.words[rng.choice(options)], word))
        else:
            out.append(word)
    return out


def mask_span(words: list[str], rng: random.Random, mask_token: str | None) -> list[str]:
    if len(words) < 2:
        return words
    length = min(rng.randint(1, 3), len(words) - 1)
    start = rng.randrange(len(words) - length + 1)
    middle = [mask_token] * length if mask_token else []
    return words[:start] + middle + words[start + length:]


def drop_words(words: list[str], rng: random.Random, rate: float) -> list[str]:
    kept = [w for w in words if rng.random() >= rate]
    return kept if kept else [rng.choice(words)]


def augmented_texts(texts: list, tokenizer, embeddings: np.ndarray, copies: int,
                    methods: tuple[str, ...] | list[str] = ("substitute", "mask"), seed: int = 42,
                    substitute_rate: float = 0.3, drop_rate: float = 0.15, neighbours_k: int = 8) -> list:
    """``copies`` new inputs per training input (texts, or (text, text_pair) tuples; fewer where a copy repeats
    an earlier input), the methods taking turns: copy k of an input uses ``methods[k % len(methods)]``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"augmentation methods must be some of {', '.join(METHODS)}, not {list(methods)}")
    if copies <= 0 or not texts:
        return []
    rng = random.Random(seed)
    pairs = isinstance(texts[0], (tuple, list))
    sides = [tuple(item) if pairs else (item,) for item in texts]
    split = [tuple(side.split() for side in item) for item in sides]
    vocab = neighbours = None
    if "substitute" in methods:
        vocab = WordVocabulary.of(tokenizer)
        used = sorted({vocab.id_of(w) for item in split for words in item for w in words if WORD.match(w)} - {None})
        neighbours = embedding_neighbours(embeddings, used, sorted(vocab.words), k=neighbours_k) if used else {}
    mask_token = getattr(tokenizer, "mask_token", None)

    def changed(words: list[str], method: str) -> str:
        if not words:
            return ""
        if method == "substitute":
            return " ".join(substitute(words, rng, vocab, neighbours, substitute_rate))
        if method == "mask":
            return " ".join(mask_span(words, rng, mask_token))
        return " ".join(drop_words(words, rng, drop_rate))

    seen = set(sides)
    out = []
    for item in split:
        for k in range(copies):
            method = methods[k % len(methods)]
            new = tuple(changed(words, method) for words in item)
            if new not in seen:
                seen.add(new)
                out.append(new if pairs else new[0])
    return out
