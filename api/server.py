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

from api.adapter_routing import AdapterRouting
from api.settings import ServerSettings, parse_settings
from engine.config import LDAConfig, engine_kwargs, prepare_process
from engine.tokenizers import CompatibilityReport, ModelLoadError, TokenizerMismatchError, check_pair

logger = logging.getLogger("lda.server")


@dataclass(slots=True)
class PairState:
    """What the LDA routes need, kept on `app.state.lda`."""

    config: LDAConfig
    compatibility: CompatibilityReport
    tokenizer: object
    max_model_len: int
    adapters: AdapterRouting | None = None
    """Set when the after model is LoRA adapters: which one a request's `model` picks."""


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
    if settings.config.pair.adapters:
        from vllm.entrypoints.openai.models.protocol import LoRAModulePath

        args.lora_modules = [LoRAModulePath(a.name, a.path) for a in settings.config.pair.adapters]
    args.host, args.port = settings.host, settings.port
    validate_parsed_serve_args(args)
    return args


def install(app, engine_client, settings: ServerSettings, report: CompatibilityReport) -> None:
    from api.alpha_middleware import AlphaMiddleware
    from api.seed_routes import router

    app.include_router(router)
    # vLLM's build_app already built the middleware stack; Starlette rebuilds it on first use
    # when it is None, so clear it to add ours (outermost: it sees every request first).
    app.middleware_stack = None
    adapters = _routing(settings)
    app.add_middleware(AlphaMiddleware, policy=settings.config.alpha, adapters=adapters)
    app.state.lda = PairState(
        config=settings.config,
        compatibility=report,
        tokenizer=engine_client.get_tokenizer(),
        max_model_len=engine_client.model_config.max_model_len,
        adapters=adapters,
    )


def _routing(settings: ServerSettings) -> AdapterRouting | None:
    pair = settings.config.pair
    if not pair.adapters:
        return None
    served = settings.config.engine.served_model_name or pair.after
    return AdapterRouting(served, tuple(a.name for a in pair.adapters))


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
        logger.info("LDA server on %s: %s", listen_address, settings.config.pair.describe())
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

    logger.info("pair: %s", settings.config.pair.describe())
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
