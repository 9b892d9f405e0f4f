"""Every use of BentoML's private modules, in one place, written for exactly one BentoML version.

BentoML 1.4 has no public way to do these, and the service needs each of them:
  - run ASGI middleware *outside* BentoML's own (metrics, tracing, timeout): shedding an overloaded server's
    requests there costs a fraction of passing them through those layers (serve/limits.py ShedWhenOverloaded),
    and connections are balanced over the workers before anything else runs (serve/balance.py);
  - its request timeout without the timer it leaves armed after every request (serve/request_timeout.py);
  - document in the OpenAPI document (/docs.json) the error answers the service sends, and its plain GET routes;
  - know which worker process this is (serve/balance.py gives each worker a slot);
  - keep a request that fails validation (a 400, the client's mistake) out of the error log.

Private modules change between releases without notice, so ``check_bentoml_version`` refuses any BentoML but
``BENTOML_VERSION``: a clear RuntimeError at start-up instead of a server that half works. Moving to another
BentoML release means re-reading the code each function here touches, then changing ``BENTOML_VERSION``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import attrs
import bentoml

BENTOML_VERSION = "1.4.40"   # the release whose private modules this file was written against


def check_bentoml_version() -> None:
    installed = bentoml.__version__
    if installed != BENTOML_VERSION:
        raise RuntimeError(f"slimship's serving patches were written for BentoML {BENTOML_VERSION}, but BentoML "
                           f"{installed} is installed: install bentoml=={BENTOML_VERSION} (constraints.txt), or "
                           "check every patch in slimship/serve/bentoml_patches.py against the new release first")


def cancel_request_timers() -> None:
    """Replace BentoML's TimeoutMiddleware.__call__ with one that cancels its timer once a request is done."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from slimship.serve.request_timeout import call_with_cancelled_timer

    check_bentoml_version()
    TimeoutMiddleware.__call__ = call_with_cancelled_timer


def allow_outermost_middleware() -> None:
    """Let a ``Service`` put middleware before BentoML's own: ``Service.add_asgi_middleware`` can only add it
    inside them, and BentoML 1.4 builds that list in ``ServiceAppFactory.middlewares``."""
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.middleware import Middleware

    check_bentoml_version()
    if getattr(ServiceAppFactory.middlewares.fget, "slimship_outermost", False):
        return
    bentoml_middlewares = ServiceAppFactory.middlewares.fget

    def middlewares(factory) -> list:
        outermost = getattr(factory.service, "outermost_middlewares", [])
        return [*(Middleware(cls, **options) for cls, options in outermost), *bentoml_middlewares(factory)]

    middlewares.slimship_outermost = True
    ServiceAppFactory.middlewares = property(middlewares)


class _DropValidationErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        return not (record.exc_info and isinstance(record.exc_info[1], ValidationError))


def quiet_client_errors() -> None:
    """BentoML logs every request that fails validation as an ERROR with a traceback, so one bad client (or a
    fuzzer) fills the log with tracebacks of answers that were right. They are answered 400 and counted in
    /metrics by status; the log keeps the server's own failures."""
    logger = logging.getLogger("bentoml._internal.server.http_app")   # where BentoML's log_exception writes
    if not any(isinstance(f, _DropValidationErrors) for f in logger.filters):
        logger.addFilter(_DropValidationErrors())


def worker_index() -> Optional[int]:
    """This worker's 0-based index (BentoML numbers its workers from 1), None outside a worker."""
    from bentoml._internal.context import server_context

    return None if server_context.worker_index is None else server_context.worker_index - 1


@attrs.define
class Service(bentoml.Service):
    """A ``bentoml.Service`` with outermost middleware and extra OpenAPI documentation; pass it to the decorator:
    ``@bentoml.service(service_class=Service, ...)``. The patches are applied when a worker builds its app, so
    importing a service module (``bentoml build``, tests) changes nothing in BentoML."""

    outermost_middlewares: list = attrs.field(factory=list, init=False)
    extra_responses: dict = attrs.field(factory=dict, init=False)   # route -> {status: OpenAPI response}
    body_required: set = attrs.field(factory=set, init=False)       # API routes that take no empty body
    extra_paths: dict = attrs.field(factory=dict, init=False)       # route -> {method: OpenAPI operation}
    extra_schemas: dict = attrs.field(factory=dict, init=False)     # name -> JSON schema, for $refs

    def add_outermost_middleware(self, middleware_cls, **options: Any) -> None:
        """Like ``add_asgi_middleware``, but outside BentoML's own middleware; the first added runs first."""
        self.outermost_middlewares.append((middleware_cls, options))

    def document_api(self, route: str, responses: dict[int, dict], body_required: bool = True) -> None:
        """Add OpenAPI response objects (plain dicts) to the POST operation of an API route, and say whether its
        request body is required (BentoML leaves that out, so a client may think an empty POST is valid)."""
        self.extra_responses.setdefault(route, {}).update(responses)
        if body_required:
            self.body_required.add(route)

    def document_path(self, route: str, operations: dict[str, dict]) -> None:
        """Describe a route served by a mounted ASGI app (BentoML documents only FastAPI ones)."""
        self.extra_paths[route] = operations

    def document_schema(self, name: str, schema: dict) -> None:
        """Add a named schema to the OpenAPI components (``#/components/schemas/<name>``)."""
        self.extra_schemas[name] = schema

    def to_asgi(self, is_main: bool = True):
        cancel_request_timers()
        allow_outermost_middleware()
        quiet_client_errors()
        return super().to_asgi(is_main)

    @property
    def openapi_spec(self):
        from bentoml._internal.service.openapi.specification import PathItem, Schema

        spec = super().openapi_spec
        for name, schema in self.extra_schemas.items():
            spec.components["schemas"][name] = Schema(**schema)
        for route, responses in self.extra_responses.items():
            operation = spec.paths[route].post
            # BentoML keys its responses by int; the same status as a str would be a second, duplicate key.
            operation["responses"] = {str(status): response
                                      for status, response in [*operation["responses"].items(), *responses.items()]}
        for route in self.body_required:
            spec.paths[route].post["requestBody"]["required"] = True
        for route, operations in self.extra_paths.items():
            spec.paths[route] = PathItem(**operations)
        return spec
