"""The HTTP service: a BentoML 1.4 service over an ONNX artifact from the BentoML model store.

    bentoml serve slimship.serve.service:Classify          # the model tag comes from SLIMSHIP_MODEL
    slimship serve --model runs/demo/model        # imports the artifact, then the same

Endpoints
  POST /classify   {"texts": ["...", ...], "probs": false} -> [{"label": ..., "score": ...(, "probs": {...})}, ...]
                   one result per text, in order; requests are batched together adaptively (serve/batcher.py).
                   A model trained on sentence pairs takes {"texts": [...], "text_pairs": [...]} (one pair per
                   position). A multi-label model answers {"labels": [{"label", "score"}, ...]} per text: every
                   label over its threshold (tuned on validation), highest first; "probs": true adds all
                   probabilities. A regression model answers {"score"} per text.
  POST /rerank     {"query": "...", "documents": ["...", ...], "top_k": n} -> [{"index", "score"}, ...] sorted by
                   score, best first (the first top_k; all without it). Only for pair models with one score per
                   pair (regression, or two labels: the second label's probability). Batched like /classify.
                   The request schemas (text_pairs required or absent, /rerank present or not) follow the model
                   served, read from its manifest when this module is imported.
  GET  /metadata   model name, version, task, text_pairs, labels, thresholds, max_length, sha256, metrics (from
                   the manifest), settings
  GET  /livez, /readyz (ready only after the warm-up inference), /metrics (Prometheus), / and /docs.json (OpenAPI,
       with every error answer of /classify documented)

Input rules (all answered with a 4xx JSON error, and the server keeps serving):
  - body not JSON / not UTF-8, "texts" missing, not a list of strings, or an empty list; "probs" not a JSON
    boolean: 400 {"error", "detail"}
  - "text_pairs" missing for a pair model, given to a single-text model, or not as long as "texts"; any other
    key a request does not know; "query" or a document empty, "top_k" below 1: 400. /rerank on a model that
    cannot rank: 404
  - a Content-Type other than application/json (none is taken as JSON): 415
  - more than SLIMSHIP_MAX_TEXTS texts (default 256), or a text longer than SLIMSHIP_MAX_TEXT_CHARS characters
    (default 10,000): 400. Within that limit, tokens beyond the model's max_length are truncated.
  - an empty string "" is an error (400): it carries no evidence, and any label returned for it would be the
    model's bias, not a prediction. Whitespace-only text is classified like any other text.
  - body larger than SLIMSHIP_MAX_BODY_BYTES (default 1,000,000): 413
Overload: a request whose predicted queue wait exceeds SLIMSHIP_MAX_LATENCY_MS (default 500), or that would grow
the queue past SLIMSHIP_MAX_QUEUE texts, gets 503 at once with a Retry-After header, counted in /metrics as
slimship_shed_requests_total.

Settings (environment variables SLIMSHIP_WORKERS, SLIMSHIP_THREADS, SLIMSHIP_MAX_BATCH_SIZE, SLIMSHIP_MAX_LATENCY_MS,
SLIMSHIP_MAX_QUEUE, SLIMSHIP_MAX_TEXTS, SLIMSHIP_MAX_TEXT_CHARS, SLIMSHIP_MAX_BODY_BYTES, SLIMSHIP_TIMEOUT_S,
SLIMSHIP_WARMUP_S, SLIMSHIP_INFER_NICE, SLIMSHIP_MODEL; defaults from the CPU count): table in serve/settings.py
and docs/SERVING.md.
This module imports only bentoml, onnxruntime, tokenizers, numpy and slimship's torch-free modules. Importing it
declares the service and changes nothing else: the model is checked once before the workers start
(``check_deployment``), each worker loads it in ``Classify.__init__``, and BentoML's internals are patched only
when a worker builds its app (serve/bentoml_patches.py).
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from typing import Annotated, Optional

import bentoml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from slimship import __version__
from slimship.core import artifact
from slimship.core.artifact import manifest_digest
from slimship.core.runtime import Classifier, ranked
from slimship.core.tasks import can_rerank, takes_pairs
from slimship.serve import bentoml_patches
from slimship.serve.balance import BalanceConnections, remove_shared_files
from slimship.serve.batcher import AdaptiveBatcher, Overloaded
from slimship.serve.limits import BodySizeLimit, JsonBodyOnly, ShedWhenOverloaded
from slimship.serve.settings import ServeSettings

# BentoML reads the model to pin, the worker count and the timeout from the class itself, in the process that runs
# `bentoml serve` or `bentoml build`, before any instance exists; the text limits are part of the published
# request schema. So the settings are read here, once (`slimship build` sets SLIMSHIP_MODEL before this import).
SETTINGS = ServeSettings.from_env()
MODEL = bentoml.models.BentoModel(SETTINGS.model)


def served_shape() -> dict[str, bool]:
    """Whether the model to serve takes sentence pairs and can rerank, from its manifest (read here, at import,
    because the request schemas depend on it). A model that cannot be read gives the single-text API; the
    deployment check then refuses to start with the reason."""
    try:
        manifest = artifact.load(MODEL.resolve().path, verify=False, format="onnx")
    except Exception:
        return {"text_pairs": False, "rerank": False}
    return {"text_pairs": takes_pairs(manifest), "rerank": can_rerank(manifest)}


SHAPE = served_shape()

Text = Annotated[str, Field(min_length=1, max_length=SETTINGS.max_text_chars)]
Texts = Annotated[list[Text], Field(min_length=1, max_length=SETTINGS.max_texts)]


class StrictRequest(bentoml.IODescriptor):
    """A request body that refuses keys it does not know (400): "text_pairs" sent to a single-text model, or a
    misspelt option, would otherwise be ignored and the answer silently be about something else."""

    model_config = ConfigDict(extra="forbid")


TopK = Optional[Annotated[int, Field(ge=1)]]
ClassifyInput = create_model("ClassifyInput", __base__=StrictRequest, texts=(Texts, ...), probs=(StrictBool, False))
PairClassifyInput = create_model("PairClassifyInput", __base__=StrictRequest, texts=(Texts, ...),
                                 text_pairs=(Texts, ...), probs=(StrictBool, False))
RerankInput = create_model("RerankInput", __base__=StrictRequest, query=(Text, ...), documents=(Texts, ...),
                           top_k=(TopK, None))


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="the label's probability")


class Prediction(BaseModel):
    """One answer; which fields it has depends on the model's task (GET /metadata states it)."""

    label: Optional[str] = Field(None, description="classification: the predicted label")
    score: Optional[float] = Field(None, description="classification: probability of the predicted label; "
                                                     "regression: the predicted score")
    labels: Optional[list[LabelScore]] = Field(None, description="multilabel: every label whose probability is "
                                                                 "over its threshold, highest first")
    probs: Optional[dict[str, float]] = Field(None, description="every label's probability (only when asked)")


class Ranked(BaseModel):
    index: int = Field(description="the document's position in the request's documents")
    score: float = Field(description="its relevance score: the regression output, or the probability of the "
                                     "second label of a two-label model")


# Every error answer, BentoML's validation errors (400) and the service's own (400, 413, 415, 503, 504), as an
# OpenAPI 3.0 schema (BentoML documents its 400 with a string "detail", but sends a list).
ERROR_BODY = {
    "title": "ErrorBody",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what was wrong, in one line"},
        "detail": {"type": "array", "items": {"type": "object"},
                   "description": "for a body that failed validation: one {type, loc, msg} object per problem"},
    },
}


ERROR_REF = "#/components/schemas/ErrorBody"


def error_response(description: str, retry_after: bool = False) -> dict:
    """An OpenAPI response object for an error answer (``retry_after``: it carries a Retry-After header)."""
    response = {"description": description, "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}}
    if retry_after:
        response["headers"] = {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                                               "schema": {"type": "integer", "minimum": 1}}}
    return response


CLASSIFY_ERRORS = {
    400: error_response("not JSON, not UTF-8, or not a valid request (an empty text, too many or too long texts, "
                        "text_pairs missing for a pair model or of another length than texts)"),
    413: error_response("request body over SLIMSHIP_MAX_BODY_BYTES"),
    415: error_response("a Content-Type other than application/json"),
    503: error_response("overloaded: the predicted queue wait is over SLIMSHIP_MAX_LATENCY_MS", retry_after=True),
    504: error_response("not answered within SLIMSHIP_TIMEOUT_S"),
}

RERANK_ERRORS = {**CLASSIFY_ERRORS, 400: error_response(
    "not JSON, not UTF-8, or not a valid request (an empty query or document, too many or too long documents, "
    "top_k below 1)")}

# Requests shed before they reach BentoML's own metrics (on arrival) or by the batcher's admission check.
SHED_REQUESTS = bentoml.metrics.Counter(name="slimship_shed_requests", labelnames=["stage"],
                                        documentation="requests answered 503 because the server was overloaded")

WARMUP_TEXTS = ["a short sentence", "a somewhat longer sentence to warm up the attention for longer inputs " * 8]


@bentoml.service(
    name="slimship",
    service_class=bentoml_patches.Service,
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.timeout_s},
    logging={"access": {"enabled": False}},   # one log line per request costs more CPU than the inference
)
class Classify:
    model = MODEL

    @bentoml.on_deployment
    def check_deployment() -> None:
        """Refuse to start on a BentoML release the patches were not written for, or on an incomplete or
        tampered model. This runs once, in the process that runs `bentoml serve`, before any worker starts: a
        failure inside a worker would only make the supervisor restart it again and again."""
        bentoml_patches.check_bentoml_version()
        artifact.load(MODEL.resolve().path, format="onnx")  # verifies every file's sha256

    def __init__(self) -> None:
        stored = self.model  # resolved from the model store: the exact version a bento pins
        # The files' sha256 are checked again here, in the worker: the copy it loads is the copy it checked.
        self.classifier = Classifier(stored.path, threads=SETTINGS.threads, spinning=False)
        self.batcher = AdaptiveBatcher(self.classifier.logits, max_batch_size=SETTINGS.max_batch_size,
                                       max_latency_ms=SETTINGS.max_latency_ms, max_queue=SETTINGS.max_queue,
                                       infer_nice=SETTINGS.infer_nice,
                                       low_priority_infer=functools.partial(self.classifier.logits, parallel=False))
        self.metadata_doc = {
            "model": stored.tag.name,
            "version": stored.tag.version,
            "task": self.classifier.task,
            "text_pairs": self.classifier.text_pairs,
            "labels": self.classifier.labels,
            **({"thresholds": self.classifier.manifest.get("thresholds")} if self.classifier.thresholds is not None
               else {}),
            "max_length": self.classifier.max_length,
            "sha256": manifest_digest(stored.path),
            "kind": self.classifier.manifest.get("kind"),
            "metrics": self.classifier.manifest.get("metrics", {}),
            "created": self.classifier.manifest.get("created"),
            "slimship": __version__,
            "settings": SETTINGS.as_dict(),
        }
        self.ready = False
        threading.Thread(target=self._warm_up, name="slimship-warmup", daemon=True).start()

    def shed_early(self) -> Optional[int]:
        """Retry-After seconds if a request arriving now is to be shed (counted), else None."""
        retry_after = self.batcher.overloaded()
        if retry_after is not None:
            SHED_REQUESTS.labels(stage="arrival").inc()
        return retry_after

    def _warm_up(self) -> None:
        """First inferences allocate ORT's buffers; measure the cost per text for the batcher's admission."""
        deadline = time.monotonic() + SETTINGS.warmup_s
        while True:
            for size in (1, 2, SETTINGS.max_batch_size // 2, SETTINGS.max_batch_size):
                texts = (WARMUP_TEXTS * size)[:size]
                if self.classifier.text_pairs:
                    texts = [(text, text) for text in texts]
                start = time.perf_counter()
                self.classifier.logits(texts)
                self.batcher.record(size, time.perf_counter() - start)
            if time.monotonic() >= deadline:
                break
        # Everything loaded so far (BentoML, pydantic, the model) lives as long as the process. Without this,
        # each full collection walks all of it: 50-100 ms pauses that stall every request in flight.
        gc.collect()
        gc.freeze()
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    async def answer(self, inputs: list, probs: bool):
        try:
            logits = await self.batcher.submit(inputs)
        except Overloaded as e:
            return overloaded_response(e)
        return JSONResponse(self.classifier.results(logits, probs))

    # The request schema follows the model served, so the published OpenAPI document is exactly what it accepts.
    if SHAPE["text_pairs"]:
        @bentoml.api(route="/classify", input_spec=PairClassifyInput)
        async def classify(self, texts: Texts, text_pairs: Texts, probs: StrictBool = False) -> list[Prediction]:
            """Classify sentence pairs, one text_pairs item per text: one answer per pair, in order.
            Classification: {"label", "score"}; multilabel: {"labels": [{"label", "score"}, ...]} over their
            thresholds; regression: {"score"}. "probs": true adds every label's probability. Concurrent requests
            share batches."""
            if len(text_pairs) != len(texts):
                return bad_request(f"\"text_pairs\" has {len(text_pairs)} items and \"texts\" {len(texts)}: "
                                   "give one pair per text")
            return await self.answer(list(zip(texts, text_pairs)), probs)
    else:
        @bentoml.api(route="/classify", input_spec=ClassifyInput)
        async def classify(self, texts: Texts, probs: StrictBool = False) -> list[Prediction]:
            """Classify texts: one answer per text, in order. Classification: {"label", "score"}; multilabel:
            {"labels": [{"label", "score"}, ...]} over their thresholds; regression: {"score"}. "probs": true adds
            every label's probability. Concurrent requests share batches."""
            return await self.answer(texts, probs)

    if SHAPE["rerank"]:
        @bentoml.api(route="/rerank", input_spec=RerankInput)
        async def rerank(self, query: Text, documents: Texts, top_k: TopK = None) -> list[Ranked]:
            """Score each document against the query and answer {"index", "score"} per document, best first (the
            first top_k when given). The pairs are batched like /classify."""
            try:
                logits = await self.batcher.submit([(query, document) for document in documents])
            except Overloaded as e:
                return overloaded_response(e)
            return JSONResponse(ranked(self.classifier.relevance(logits), top_k))

    @bentoml.on_shutdown
    async def drain(self) -> None:
        await self.batcher.drain()
        remove_shared_files()


def bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def overloaded_response(e: Overloaded) -> JSONResponse:
    SHED_REQUESTS.labels(stage="admission").inc()
    return JSONResponse({"error": str(e)}, status_code=503, headers={"Retry-After": str(e.retry_after)})


def this_workers_service():
    """The worker's Classify instance, None while it is still being created (BentoML makes one per worker)."""
    try:
        return bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return None


def shed_early() -> Optional[int]:
    service = this_workers_service()
    return None if service is None else service.shed_early()


async def metadata(request: Request) -> JSONResponse:
    service = this_workers_service()
    if service is None:
        return JSONResponse({"error": "service is starting"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse(service.metadata_doc)


Classify.document_schema("ErrorBody", ERROR_BODY)
Classify.mount_asgi_app(Starlette(routes=[Route("/metadata", metadata, methods=["GET"])]), path="/")
Classify.document_path("/metadata", {"get": {
    "description": "The model served (name, version, task, text_pairs, labels, thresholds, max_length, manifest "
                   "sha256, metrics) and the settings",
    "operationId": "slimship__metadata",
    "responses": {"200": {"description": "the model and settings",
                          "content": {"application/json": {"schema": {"type": "object"}}}},
                  "503": error_response("the worker is still starting", retry_after=True)}}})
Classify.document_api("/classify", CLASSIFY_ERRORS)
if SHAPE["rerank"]:
    Classify.document_api("/rerank", RERANK_ERRORS)

# Outermost of all: the workers share one listening socket, and a burst of new connections can all land on one
# of them; this evens them out (serve/balance.py).
Classify.add_outermost_middleware(BalanceConnections, workers=SETTINGS.workers,
                                  worker_index=bentoml_patches.worker_index)
# Outside BentoML's metrics, tracing and timeout layers: an overloaded server refuses a request for a fraction of
# what passing it through those costs (2 cores, 2x capacity: 503s in 29-184 ms at p50 instead of 255 ms; at 4x
# no client timeouts instead of 64 of 40,000).
Classify.add_outermost_middleware(ShedWhenOverloaded, paths=("/classify", "/rerank"), overloaded=shed_early)
Classify.add_asgi_middleware(JsonBodyOnly, paths=("/classify", "/rerank"))
Classify.add_asgi_middleware(BodySizeLimit, max_body_bytes=SETTINGS.max_body_bytes)
