"""`lda serve`: vLLM's OpenAI server, on the pair engine, with alpha, the seed's endpoints and metrics.

We reuse vLLM's server whole (request handling, streaming, logprobs, `n`, `stop`, `seed`, chat
templates, disconnect handling, /health, /metrics) and add four things to its app: the API key and
body-size checks (`api/access.py`, outermost, before any body is read), the alpha middleware, the
original project's routes, and the pair's state. vLLM's own API-key middleware, which guards only
/v1, is taken out: ours guards every route with the same key. The launch mirrors vLLM's own
`run_server` / `build_and_serve` (vllm/entrypoints/launchers/api_server/entry.py), with our
additions between building the app and serving it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from api import metrics
from api.adapter_routing import AdapterRouting
from api.settings import RequestLimits, ServerSettings, parse_settings, setting
from engine.config import LDAConfig, engine_kwargs, prepare_process
from engine.env import HOST_IP_VAR, RUNTIME_LORA_VAR
from engine.prompts import PromptFormat
from engine.plugin import PROJECT_LOGGER
from engine.compat.patch_guard import Target, install_guarded
from engine.tokenizers import CompatibilityReport, ModelLoadError, TokenizerMismatchError, check_pair

logger = logging.getLogger("lda.server")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ServeError(RuntimeError):
    """The server cannot serve as configured; `lda serve` prints it and exits 2."""


class EngineDied(RuntimeError):
    """The engine core stopped under a running server; `lda serve` exits 1 so a supervisor restarts it."""


ENGINE_DIED_EXIT = 1
ENGINE_DIED_HELP = (
    "the engine core process died (killed, or out of memory); requests in flight were answered with an "
    "error and the server stopped: restart it (a supervisor does this on the non-zero exit)"
)


@dataclass(slots=True)
class PairState:
    """What the LDA routes need, kept on `app.state.lda`."""

    config: LDAConfig
    compatibility: CompatibilityReport
    tokenizer: object
    max_model_len: int
    limits: RequestLimits
    prompt_format: PromptFormat
    tokenize_pool: ThreadPoolExecutor
    """Where the original routes format and tokenize prompts, off the event loop."""
    adapters: AdapterRouting
    """Which after model a request's `model` picks (`api.adapter_routing`: one rule for every route)."""
    runtime: object | None = None
    """`api.runtime_adapters.RuntimeAdapters` when adapters may be loaded at runtime."""
    weights: object | None = None
    """`api.weights_routes.RuntimeWeights`: the stacks' weight versions, and full-weight loads."""


def vllm_namespace(settings: ServerSettings):
    """vLLM's own server arguments, with the pair's engine options applied on top."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="lda serve"))
    args = parser.parse_args(["--model", settings.config.pair.after, *settings.vllm_args])
    for key, value in engine_kwargs(settings.config).items():
        if key == "max_logprobs":  # one-pass scoring's floor; a larger value given after `--` stands
            value = max(value, args.max_logprobs or 0)
        setattr(args, key, value)
    name = settings.config.engine.served_model_name
    args.served_model_name = [name] if name else None  # vLLM's server takes a list
    if settings.config.pair.adapters:
        from vllm.entrypoints.openai.models.protocol import LoRAModulePath

        args.lora_modules = [LoRAModulePath(a.name, a.path) for a in settings.config.pair.adapters]
    args.override_generation_config = capped_generation_config(args.override_generation_config, settings.limits.max_tokens)
    args.host, args.port = settings.host, settings.port
    args.api_key = None  # the key is ours (settings.access); vLLM's would guard /v1 only
    validate_parsed_serve_args(args)
    return args


def capped_generation_config(override: dict | None, max_tokens: int | None) -> dict | None:
    """vLLM's `--override-generation-config` with its default length capped at LDA_MAX_TOKENS.

    A request that asks no length then gets LDA_MAX_TOKENS (or less, to fit the context): vLLM's own
    default of max_tokens, as `--override-generation-config '{"max_new_tokens": N}'` sets it. A
    smaller default given after `--` stays.
    """
    if max_tokens is None:
        return override
    given = (override or {}).get("max_new_tokens")
    return {**(override or {}), "max_new_tokens": max_tokens if given is None else min(given, max_tokens)}


def _original_error_format(app) -> None:
    """FastAPI's {"detail": ...} errors on the original routes, as the original server gave.

    vLLM registers handlers that answer every route in OpenAI's error format; keep them for the
    other routes and dispatch on the path.
    """
    from fastapi import HTTPException
    from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError

    from api.access import ORIGINAL_PATHS

    for kind, original in ((HTTPException, http_exception_handler), (RequestValidationError, request_validation_exception_handler)):
        vllms = app.exception_handlers.get(kind)

        async def handler(request, exc, original=original, vllms=vllms):
            use = original if vllms is None or request.url.path in ORIGINAL_PATHS else vllms
            return await use(request, exc)

        app.add_exception_handler(kind, handler)


def drop_vllm_key_check(app) -> None:
    """vLLM adds its own key check when VLLM_API_KEY is set; settings made that key ours, and
    vLLM's copy would guard /v1 only and refuse `X-API-Key`."""
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    app.user_middleware = [m for m in app.user_middleware if m.cls is not AuthenticationMiddleware]


MIDDLEWARE_RESET_TARGETS = (
    Target("starlette.applications", "Starlette.add_middleware", ("self", "middleware_class", "args", "kwargs")),
    Target("starlette.applications", "Starlette.build_middleware_stack", ("self",)),
)


def add_outer_middleware(app, middleware_class, **options) -> bool:
    """Add a middleware to vLLM's already built app, outermost (it sees every request first)."""
    return add_outer_middlewares(app, [(middleware_class, options)])


def add_outer_middlewares(app, middlewares: list[tuple[type, dict]]) -> bool:
    """Add middlewares to vLLM's already built app, each outside the one before (the last added
    sees every request first).

    vLLM's build_app already built the middleware stack, and Starlette refuses new middleware
    then; it rebuilds the stack on first use when it is None, so we clear it. Guarded like every
    patch of another package's internals (engine/compat/patch_guard.py): on a mismatch nothing is added,
    and the one log line says so.
    """

    def reset_and_add() -> None:
        app.middleware_stack = None
        for middleware_class, options in middlewares:
            app.add_middleware(middleware_class, **options)

    names = ", ".join(cls.__name__ for cls, _ in middlewares)
    return install_guarded(f"middleware reset ({names})", MIDDLEWARE_RESET_TARGETS, reset_and_add)


def install(app, engine_client, settings: ServerSettings, report: CompatibilityReport) -> None:
    from api.access import OPENAI_PATHS, ORIGINAL_PATHS, APIKeyMiddleware, BodyLimitMiddleware
    from api.alpha_middleware import AlphaMiddleware
    from api.weights_routes import RuntimeWeights, WeightsMiddleware
    from api.weights_routes import router as weights_router
    from engine.weights import PairWeights
    from api.routes import GENERATION_PATHS, refuse_unserved, served_paths
    from api.score_routes import router as score_router
    from api.runtime_adapters import RuntimeAdapters, replace_vllm_routes
    from api.token_scores import TokenScoresMiddleware
    from api.original_routes import router

    app.include_router(router)
    _original_error_format(app)
    app.include_router(score_router)
    replace_vllm_routes(app, settings.allow_runtime_adapters)
    if settings.allow_weight_loads:
        app.include_router(weights_router)
    drop_vllm_key_check(app)
    # Last of the routers: every route mounted by now that the pair does not serve becomes a 404.
    served = served_paths(bool(settings.config.pair.adapters), settings.allow_runtime_adapters, settings.allow_weight_loads)
    refuse_unserved(app, served)
    adapters = build_routing(settings)
    weights = RuntimeWeights(PairWeights(settings.config.pair), settings.allow_weight_loads)
    # Every route that runs the engine passes the weights gate (no response mixes weights).
    gated = (GENERATION_PATHS | OPENAI_PATHS.keys() | ORIGINAL_PATHS.keys() | {"/v1/lda/score", "/generative_scoring"}) & served
    # The last added is outermost: the key check sees every request first, then the body limit,
    # then the weights gate, then alpha, then the token scores (inside alpha, so they see its
    # validated alpha in vllm_xargs).
    installed = add_outer_middlewares(app, [
        (TokenScoresMiddleware, dict(default_alpha=settings.config.alpha.default_alpha)),
        (AlphaMiddleware, dict(
            policy=settings.config.alpha, limits=settings.limits, adapters=adapters,
            other_generation_paths=(GENERATION_PATHS & served) - OPENAI_PATHS.keys(),
            served_name=settings.config.engine.served_model_name or settings.config.pair.after,
            pair={"after": settings.config.pair.after, "before": settings.config.pair.before},
        )),
        (WeightsMiddleware, dict(runtime=weights, gated_paths=frozenset(gated - {"/tokenizer_compatibility"}))),
        (BodyLimitMiddleware, dict(max_body_bytes=settings.limits.max_body_bytes)),
        (APIKeyMiddleware, dict(access=settings.access)),
    ])
    if not installed and settings.access.api_key:
        # Without the middleware the key would protect nothing: refuse rather than serve open.
        raise ServeError("the API key check could not be installed (see the log line above); not serving")
    app.state.lda = PairState(
        config=settings.config,
        compatibility=report,
        tokenizer=engine_client.get_tokenizer(),
        max_model_len=engine_client.model_config.max_model_len,
        limits=settings.limits,
        prompt_format=settings.prompt_format,
        tokenize_pool=ThreadPoolExecutor(max_workers=1, thread_name_prefix="lda-tokenize"),
        adapters=adapters,
        runtime=RuntimeAdapters(settings.config.pair, adapters) if settings.allow_runtime_adapters else None,
        weights=weights,
    )
    for adapter in settings.config.pair.adapters:
        metrics.adapter_loaded(adapter.name)
    metrics.weights_state(weights.weights)


def build_routing(settings: ServerSettings) -> AdapterRouting:
    """The `model` rule's names: the served name, and the adapters (none without LoRA)."""
    pair = settings.config.pair
    served = settings.config.engine.served_model_name or pair.after
    return AdapterRouting(served, [a.name for a in pair.adapters], has_default=bool(pair.adapters))


class ShutdownTracker:
    """Whether the engine was asked to stop, to tell a requested shutdown from an engine death.

    vLLM's watchdog stops the HTTP server when the engine core dies, and `serve_http` returns as
    it does after SIGTERM; the engine client reads `errored` either way, since a stopped engine
    counts as dead. Only a requested shutdown goes through `engine_client.shutdown` before the
    HTTP server stops (vLLM's launcher calls it from its signal handler), so this wraps that one
    method of this one client: a clean exit code after an engine death would tell a supervisor
    the stop was asked for.
    """

    def __init__(self, engine_client) -> None:
        self.asked = False
        shutdown = engine_client.shutdown

        def asked_shutdown(*args, **kwargs):
            self.asked = True
            return shutdown(*args, **kwargs)

        engine_client.shutdown = asked_shutdown


async def _serve(settings: ServerSettings, report: CompatibilityReport) -> None:
    from vllm import envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    args = vllm_namespace(settings)

    def _interrupt_init(*_) -> None:  # SIGTERM while the engine loads: stop, cleanly
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, _interrupt_init)
    listen_address, sock = setup_server(args, reuse_port=False)
    async with build_async_engine_client(args) as engine_client:
        stop = ShutdownTracker(engine_client)
        supported_tasks = await engine_client.get_supported_tasks()
        app = build_app(args, supported_tasks, engine_client.model_config)
        install(app, engine_client, settings, report)
        await init_app_state(engine_client, app.state, args, supported_tasks)
        logger.info("LDA server on %s: %s", listen_address, settings.config.pair.describe())
        if settings.access.api_key is None:
            logger.info("no API key set (%s): every route is open", setting("access.api_key").env)
        shutdown_task = await serve_http(
            app,
            sock=sock,
            enable_ssl_refresh=False,
            host=args.host,
            port=args.port,
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
            h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
            h11_max_header_count=args.h11_max_header_count,
        )
        died = engine_client.errored and not stop.asked
    try:
        await shutdown_task
    finally:
        sock.close()
    if died:
        raise EngineDied(ENGINE_DIED_HELP)


def serve(settings: ServerSettings) -> None:
    """Check the pair's tokenizers, then start the engine and serve until SIGTERM or Ctrl-C."""
    import uvloop

    logger.info("pair: %s", settings.config.pair.describe())
    report = check_pair(settings.config.pair.after, settings.config.pair.before)
    for warning in report.warnings:
        logger.warning("tokenizers: %s", warning)
    try:
        prepare_process(settings.config, server_env(settings, os.environ))
    except ValueError as error:  # e.g. fewer cores than parallel ranks
        raise ServeError(str(error)) from None
    uvloop.run(_serve(settings, report))


def server_env(settings: ServerSettings, environ) -> dict[str, str]:
    """The variables the server sets for vLLM at start-up (through `prepare_process`)."""
    # Our adapter routes replace vLLM's (settings read its switch as ours): keep vLLM from mounting
    # its unchecked copies, here and through SageMaker's adapter routes, or resolving adapters itself.
    env = {RUNTIME_LORA_VAR: "0"}
    # A server on loopback keeps vLLM's own process traffic there too: with TP or DP its message
    # queues otherwise advertise the host's address (VLLM_HOST_IP, read by vLLM's engine processes).
    if settings.host in LOOPBACK_HOSTS and HOST_IP_VAR not in environ:
        env[HOST_IP_VAR] = "127.0.0.1"
    return env


def configure_logging() -> None:
    """INFO lines of `lda.*` in the server's log, whatever vLLM's imports do to the root logger.

    vLLM's SageMaker routes (mounted by its `build_app`) import model_hosting_container_standards,
    which sets the root logger's level to its SAGEMAKER_CONTAINER_LOG_LEVEL (default ERROR) at import;
    vLLM restores the handlers' levels but not the root's. Our loggers then inherited ERROR and every
    INFO line after the engine start ("LDA server on ...", the served routes) was dropped. The
    project's logger keeps its own level, so it no longer inherits the root's.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(PROJECT_LOGGER).setLevel(logging.INFO)


def cli(argv: list[str]) -> int:
    configure_logging()
    try:
        settings = parse_settings(argv)
    except ValueError as error:
        print(f"lda serve: {error}", file=sys.stderr)
        return 2
    try:
        serve(settings)
    except (ModelLoadError, TokenizerMismatchError, ServeError) as error:
        print(f"lda serve: {error}", file=sys.stderr)
        return 2
    except EngineDied as error:
        print(f"lda serve: {error}", file=sys.stderr)
        return ENGINE_DIED_EXIT
    except KeyboardInterrupt:
        return 0
    return 0
