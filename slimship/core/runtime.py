"""The one inference path: an ONNX artifact -> labels, scores and probabilities.

Used by the HTTP service, by batch scoring and by ``slimship evaluate`` on ONNX artifacts, so all three give
the same answers. It needs only onnxruntime, tokenizers and numpy (no torch, no transformers), which keeps the
serving image small and its start fast.

    clf = Classifier("runs/demo/model")
    clf.predict(["great film"])  ->  [{"label": "positive", "score": 0.98}]

Answers by task (core/tasks.py): classification {"label", "score"}; multilabel {"labels": [{"label", "score"},
...]} with every label whose probability is over its threshold, highest first; regression {"score"}. A model
trained on sentence pairs takes (text, text_pair) tuples wherever it takes texts, and ``rerank`` scores
documents against a query with it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from slimship.core import artifact
from slimship.core.artifact import ArtifactError
from slimship.core.errors import UserError
from slimship.core.metrics import sigmoid
from slimship.core.tasks import MULTILABEL, REGRESSION, can_rerank, takes_pairs, task_of, thresholds_of

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# One more ONNX Runtime call costs about as much as this many extra (padded) tokens in a call. Measured on
# 2 cores with MiniLM students and teacher: 16-32 split a batch of 32 SST-2 sentences into 4-6 calls and gave
# the most rows/s; much larger values leave the padding in, much smaller ones pay per-call overhead.
CALL_OVERHEAD_TOKENS = 32


def default_threads() -> int:
    """Intra-op threads: SLIMSHIP_THREADS if set, else every core (ONNX Runtime's own default ignores cgroups)."""
    env = os.environ.get("SLIMSHIP_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def length_groups(lengths: np.ndarray, call_overhead: int = CALL_OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Split a batch into groups of similar length, each to be run as its own padded call.

    A padded batch costs (rows x its longest row) tokens; short sentences padded to the longest one can double
    the work. Over the rows sorted by length, this picks the cuts that minimise padded tokens plus
    ``call_overhead`` per call (a small dynamic programme: batches are at most a few hundred rows).
    Returns row indices per group, shortest group first.
    """
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = np.asarray(lengths)[order]
    n = len(order)
    cost = np.zeros(n + 1)            # cost[j]: cheapest way to run the j shortest rows
    start = np.zeros(n + 1, dtype=int)  # start[j]: where the last group of that way begins
    for j in range(1, n + 1):
        firsts = np.arange(j)
        options = cost[:j] + (j - firsts) * sorted_lengths[j - 1] + call_overhead
        best = int(options.argmin())
        cost[j], start[j] = options[best], best
    groups = []
    j = n
    while j > 0:
        groups.append(order[start[j]:j])
        j = start[j]
    return groups[::-1]


def pad_token_of(tokenizer, manifest: dict[str, Any]) -> tuple[str, int]:
    """(pad token, id) the model was trained with: what export recorded from the Hugging Face tokenizer
    (manifest "tokenizer"), else the tokenizer.json's own padding, else [PAD] / id 0 (older BERT artifacts).
    RoBERTa-style models pad with <pad> = 1 and derive position ids from it, so id 0 would be wrong there."""
    recorded = manifest.get("tokenizer") or {}
    if recorded.get("pad_token_id") is not None:
        return str(recorded.get("pad_token") or ""), int(recorded["pad_token_id"])
    padding = tokenizer.padding
    if padding and padding.get("pad_token") is not None:
        return padding["pad_token"], int(padding["pad_id"])
    pad_id = tokenizer.token_to_id("[PAD]")
    return "[PAD]", 0 if pad_id is None else pad_id


def padding_side_of(manifest: dict[str, Any]) -> str:
    """The side the model was trained to be padded on (export records it; older artifacts: right)."""
    side = str((manifest.get("tokenizer") or {}).get("padding_side") or "right")
    if side not in ("right", "left"):
        raise ArtifactError(f"padding side {side!r} in the manifest is neither right nor left")
    return side


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Classifier:
    """A verified ONNX artifact ready to classify text."""

    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, verify: bool = True,
                 spinning: bool = True):
        """``threads``: CPU threads for ONNX Runtime (default: SLIMSHIP_THREADS, else every core): a single text
        runs on that many intra-op threads, a batch runs its calls side by side on that many threads.
        ``spinning=False`` lets idle ORT threads sleep instead of busy-waiting: a server sharing its cores with
        an event loop wants that; a batch job that keeps ORT busy does not."""
        from tokenizers import Tokenizer

        self.path = Path(artifact_dir)
        self.manifest = artifact.load(self.path, verify=verify, format="onnx")
        for name in (MODEL_FILE, TOKENIZER_FILE):
            if name not in self.manifest.get("files", {}):
                raise ArtifactError(f"{self.path}: incomplete ONNX artifact, the manifest lists no {name}")
        self.labels: list[str] = list(self.manifest["labels"])
        self.max_length: int = int(self.manifest["max_length"])
        self.task: str = task_of(self.manifest)
        self.text_pairs: bool = takes_pairs(self.manifest)
        recorded = thresholds_of(self.manifest)
        self.thresholds = None if recorded is None else np.asarray(recorded, dtype=np.float64)

        self.tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        # Decoders (GPT-2, Llama, Qwen) classify from the last token that is not the pad id, so padding with
        # any other id would classify short rows from their padding.
        pad_token, self.pad_id = pad_token_of(self.tokenizer, self.manifest)
        self.padding_side = padding_side_of(self.manifest)
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=pad_token, direction=self.padding_side)

        self.threads = threads or default_threads()
        self._spinning = spinning
        import onnxruntime as ort

        # Chosen once: the per-thread sessions opened later must run where this one runs.
        self._providers = self.providers(ort)
        self.session = self._new_session(self.threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        # Batches on a CPU with several threads run data-parallel: see run().
        self._parallel = self.threads > 1 and self.session.get_providers()[0] == "CPUExecutionProvider"
        self._parallel_session = None   # made on first use: one intra-op thread (_one_thread_session)
        self._pool = None
        self._parallel_lock = threading.Lock()

    def _new_session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not self._spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path / MODEL_FILE), options, providers=self._providers)

    @staticmethod
    def providers(ort) -> list[str]:
        """CUDA first where onnxruntime-gpu and a GPU are present, CPU always as the fallback."""
        available = ort.get_available_providers()
        wanted = [p for p in ("CUDAExecutionProvider",) if p in available and os.environ.get("SLIMSHIP_DEVICE") != "cpu"]
        return wanted + ["CPUExecutionProvider"]

    def encode(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        """The model's inputs for ``texts`` (or (text, text_pair) tuples for a pair model): token ids and masks,
        truncated to max_length (pairs longest first, as transformers does), padded to the longest on the
        model's side (right unless its manifest says left). ``run`` takes them; encoding apart lets a batch job
        tokenize the next chunk while one runs."""
        if not texts:
            return {name: np.zeros((0, 1), dtype=np.int64) for name in self.input_names}
        if isinstance(texts[0], str) == self.text_pairs:
            raise UserError("this model takes (text, text_pair) pairs" if self.text_pairs else
                            "this model takes single texts, not pairs")
        encodings = self.tokenizer.encode_batch([t if isinstance(t, str) else tuple(t) for t in texts])
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: feeds[name] for name in self.input_names}

    def logits(self, texts: Sequence[str], parallel: bool = True) -> np.ndarray:
        return self.run(self.encode(texts), parallel=parallel)

    def run(self, feeds: dict[str, np.ndarray], batch_size: int | None = None, parallel: bool = True) -> np.ndarray:
        """Logits of encoded (``encode``) rows, in input order.

        ``batch_size``: run at most that many rows at a time, taken in order of length, each batch padded only
        to its own longest row. For many rows encoded at once (batch scoring encodes whole chunks); without it
        the rows are one batch. ``parallel=False`` (on a CPU with threads > 1) runs everything on the
        calling thread alone, through a one-thread session: for a caller that lowered its own thread's priority,
        since ONNX Runtime's and the pool's threads keep theirs."""
        lengths = feeds["attention_mask"].sum(axis=1)
        if batch_size is None or len(lengths) <= batch_size:
            return self._run_batch(feeds, lengths, parallel)
        logits = np.empty((len(lengths), len(self.labels)), dtype=np.float32)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max())
            batch = {name: np.ascontiguousarray(self._columns(value[rows], width)) for name, value in feeds.items()}
            logits[rows] = self._run_batch(batch, lengths[rows], parallel)
        return logits

    def _columns(self, value: np.ndarray, width: int) -> np.ndarray:
        """The ``width`` columns that hold the rows' tokens: the first ones when padded on the right."""
        return value[:, :width] if self.padding_side == "right" else value[:, value.shape[1] - width:]

    def _run_batch(self, feeds: dict[str, np.ndarray], lengths: np.ndarray, parallel: bool = True) -> np.ndarray:
        """One batch, run in groups of similar length (``length_groups``) so short texts are not padded to the
        batch's longest. For FP32 and static INT8 models the split changes speed only (attention masks the
        padding). Dynamic INT8 picks its activation scales per call from everything in it, padding included,
        so there a row's logits depend a little on its batch-mates with or without the split (99% of SST-2
        predictions unchanged by it)."""
        if len(lengths) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        session = self.session if parallel or not self._parallel else self._one_thread_session()
        if len(lengths) == 1:
            width = int(lengths[0])
            return session.run(["logits"], {name: self._columns(value, width) for name, value in feeds.items()})[0]
        logits = np.empty((len(lengths), len(self.labels)), dtype=np.float32)
        groups = length_groups(lengths)

        def run_group(session, rows):
            width = int(lengths[rows].max())
            group = {name: np.ascontiguousarray(self._columns(value[rows], width)) for name, value in feeds.items()}
            logits[rows] = session.run(["logits"], group)[0]

        if not (self._parallel and parallel):
            for rows in groups:
                run_group(session, rows)
            return logits
        # Data-parallel: the calls of one batch (the groups, and halves of the biggest groups until there are
        # as many calls as threads) run at once, each on one thread. For these sentence-length batches that
        # beat splitting each call's small matrices over the threads by 40-50% (2 cores, the SST-2 student:
        # 1,910-2,040 rows/s against 1,100-1,370).
        while len(groups) < self.threads and max(len(g) for g in groups) > 1:
            biggest = max(range(len(groups)), key=lambda i: len(groups[i]))
            rows = groups.pop(biggest)
            groups += [rows[:len(rows) // 2], rows[len(rows) // 2:]]
        one_thread = self._one_thread_session()
        with self._parallel_lock:        # callers on several threads must not build it twice
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="slimship-ort")
        # Longest calls first, so the last one to start is a short one.
        groups.sort(key=lambda rows: -len(rows) * int(lengths[rows].max()))
        for future in [self._pool.submit(run_group, one_thread, rows) for rows in groups]:
            future.result()
        return logits

    def _one_thread_session(self):
        """The session with one intra-op thread, made on first use and shared (ONNX Runtime sessions take
        concurrent runs): the pool's calls and ``parallel=False`` runs use it."""
        with self._parallel_lock:
            if self._parallel_session is None:
                self._parallel_session = self._new_session(1)
            return self._parallel_session

    def predict(self, texts, probs: bool = False) -> list[dict[str, Any]]:
        """One answer per input (see the module's docstring), in input order; ``probs`` adds every label's
        probability by label (classification and multilabel)."""
        return self.results(self.logits(texts), probs)

    def results(self, logits: np.ndarray, probs: bool = False) -> list[dict[str, Any]]:
        if self.task == REGRESSION:
            return [{"score": float(v)} for v in np.asarray(logits, dtype=np.float32).reshape(len(logits), -1)[:, 0]]
        if self.task == MULTILABEL:
            return self._multilabel_results(logits, probs)
        p = softmax(logits.astype(np.float32))
        best = p.argmax(axis=-1)
        out = []
        for row, k in zip(p, best):
            item: dict[str, Any] = {"label": self.labels[k], "score": float(row[k])}
            if probs:
                item["probs"] = {label: float(v) for label, v in zip(self.labels, row)}
            out.append(item)
        return out

    def _multilabel_results(self, logits: np.ndarray, probs: bool) -> list[dict[str, Any]]:
        p = sigmoid(logits).astype(np.float32)
        over = p > (self.thresholds if self.thresholds is not None else 0.5)
        out = []
        for row, chosen in zip(p, over):
            ids = sorted(np.flatnonzero(chosen).tolist(), key=lambda j: -row[j])
            item: dict[str, Any] = {"labels": [{"label": self.labels[j], "score": float(row[j])} for j in ids]}
            if probs:
                item["probs"] = {label: float(v) for label, v in zip(self.labels, row)}
            out.append(item)
        return out

    def relevance(self, logits: np.ndarray) -> np.ndarray:
        """One relevance score per row for ranking: the regression output, or for a two-label classifier the
        probability of its second label (labels sort as 0 < 1, negative < positive, irrelevant < relevant)."""
        if self.task == REGRESSION:
            return np.asarray(logits, dtype=np.float32).reshape(len(logits), -1)[:, 0]
        return softmax(logits.astype(np.float32))[:, 1]

    def check_rerank(self) -> None:
        """A UserError unless this model can rerank: a pair model with a single score per pair."""
        if not self.text_pairs:
            raise UserError("this model was trained on single texts, not (query, document) pairs: it cannot rerank")
        if not can_rerank(self.manifest):
            raise UserError(f"reranking needs a regression or two-label pair model; this one is {self.task} over "
                            f"{len(self.labels)} labels")

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> list[dict[str, Any]]:
        """``{"index", "score"}`` per document, best first (ties keep document order), the first ``top_k``."""
        self.check_rerank()
        return ranked(self.relevance(self.logits([(query, d) for d in documents])), top_k)


def ranked(scores: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [{"index": int(i), "score": float(scores[i])} for i in order]
