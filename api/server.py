"""`lda serve`: vLLM's OpenAI server, on the pair engine, with alpha, the seed's endpoints and metrics.

We reuse vLLM's server whole (request handling, streaming, logprobs, `n`, `stop`, `seed`, chat
templates, disconnect handling, /health, /metrics) and add three things to its app: the alpha
middleware, the seed's routes, and the pair's state. The launch mirrors vLLM's own
`run_server` / `build_and_serve` (vllm/entrypoints/launchers/api_server/entry.py), with our
additions between building the app and serving it.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass

from api.settings import ServerSettings, parse_settings
from engine.config import LDAConfig, engine_kwargs, prepare_process
from engine.patch_guard import Target, install_guarded
from engine.tokenizers import CompatibilityReport, ModelLoadError, TokenizerMismatchError, check_pair

logger = logging.getLogger("lda.server")


@dataclass(slots=True)
class PairState:
    """What the LDA routes need, kept on `app.state.lda`."""

    config: LDAConfig
    compatibility: CompatibilityReport
    tokenizer: object
    max_model_len: int


def vllm_namespace(settings: ServerSettings):
    """vLLM's own server arguments, with the pair's engine options applied on top."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="lda serve"))
    args = parser.parse_args(["--model", settings.config.pair.after, *settings.vllm_args])
    for key, value in engine_kwargs(settings.config).items():
        setattr(args, key, value)
    name = settings.config.engine.served_model_name
    args.served_model_name = [name] if name else None  # vLLM's server takes a list
    args.host, args.port = settings.host, settings.port
    validate_parsed_serve_args(args)
    return args


MIDDLEWARE_RESET_TARGETS = (
    Target("starlette.applications", "Starlette.add_middleware", ("self", "middleware_class", "args", "kwargs")),
    Target("starlette.applications", "Starlette.build_middleware_stack", ("self",)),
)


def add_outer_middleware(app, middleware_class, **options) -> bool:
    """Add a middleware to vLLM's already built app, outermost (it sees every request first).

    vLLM's build_app already built the middleware stack, and Starlette refuses new middleware
    then; it rebuilds the stack on first use when it is None, so we clear it. Guarded like every
    patch of another package's internals (engine/patch_guard.py): on a mismatch the server runs
    without it, and the one log line says so.
    """

    def reset_and_add() -> None:
        app.middleware_stack = None
        app.add_middleware(middleware_class, **options)

    return install_guarded(f"middleware reset ({middleware_class.__name__})", MIDDLEWARE_RESET_TARGETS, reset_and_add)


def install(app, engine_client, settings: ServerSettings, report: CompatibilityReport) -> None:
    from api.alpha_middleware import AlphaMiddleware
    from api.seed_routes import router

    app.include_router(router)
    add_outer_middleware(app, AlphaMiddleware, policy=settings.config.alpha)
    app.state.lda = PairState(
        config=settings.config,
        compatibility=report,
        tokenizer=engine_client.get_tokenizer(),
        max_model_len=engine_client.model_config.max_model_len,
    )


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
        supported_tasks = await engine_client.get_supported_tasks()
        app = build_app(args, supported_tasks, engine_client.model_config)
        install(app, engine_client, settings, report)
        await init_app_state(engine_client, app.state, args, supported_tasks)
        logger.info("LDA server on %s: after=%s before=%s", listen_address, settings.config.pair.after, settings.config.pair.before)
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
    try:
        await shutdown_task
    finally:
        sock.close()


def serve(settings: ServerSettings) -> None:
    """Check the pair's tokenizers, then start the engine and serve until SIGTERM or Ctrl-C."""
    import uvloop

    report = check_pair(settings.config.pair.after, settings.config.pair.before)
    for warning in report.warnings:
        logger.warning("tokenizers: %s", warning)
    prepare_process(settings.config)
    uvloop.run(_serve(settings, report))


def cli(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = parse_settings(argv)
    except ValueError as error:
        print(f"lda serve: {error}", file=sys.stderr)
        return 2
    try:
        serve(settings)
    except (ModelLoadError, TokenizerMismatchError) as error:
        print(f"lda serve: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
