"""serve, worker: commands that run the service."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

log = logging.getLogger("subnetscope")

DEMO_NAMES = ("base", "sft", "rl_a", "rl_b", "resized")


def register(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the web app (API + dashboard); without REDIS_URL also Redis and a worker",
        description="Serve the API and dashboard. With no REDIS_URL, start an embedded redis-server "
                    "(AOF under the data directory) and worker processes too.",
    )
    serve.add_argument("--host", help="address to bind (default: SUBNETSCOPE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: SUBNETSCOPE_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="embedded mode: worker processes to start")
    serve.add_argument("--web-workers", type=int, dest="web_workers",
                       help="web processes on the port (default: SUBNETSCOPE_WEB_WORKERS or min(4, cores))")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker",
        help="run an RQ worker that computes analyses",
        description="Run a worker on REDIS_URL (or on the embedded Redis of a `serve` on this machine).",
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="worker name (default: host.pid.random)")
    worker.set_defaults(func=cmd_worker)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def ensure_demo(root: Path) -> Path:
    """Write the demo checkpoint family under `root/demo` once, atomically (several processes may race)."""
    demo = root / "demo"
    if all((demo / n).is_dir() for n in DEMO_NAMES):
        return demo
    from worker.demo.synthetic import write_demo

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".demo-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_demo(tmp)
    try:
        if demo.exists():
            shutil.rmtree(demo)  # a partial family from an interrupted start
        tmp.rename(demo)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # someone else won the race
    return demo


def cmd_serve(args: argparse.Namespace) -> int:
    _logging()
    import uvicorn

    from app.cli.embedded import Embedded
    from app.core.settings import get_settings
    from app.web.main import create_app

    settings = get_settings()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers),
                                   ("web_workers", getattr(args, "web_workers", None))) if v}
    if overrides:
        settings = settings.model_copy(update=overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    demo = ensure_demo(settings.checkpoints_root)
    log.info("demo checkpoints in %s (analyse them as local:demo/base, local:demo/rl_a, ...)", demo)
    from app.cli import demo_training

    (settings.data_dir / "logs").mkdir(parents=True, exist_ok=True)
    # The trained family (a small Llama, SFT and RL runs) trains in a child process: pages answer meanwhile.
    trainer = demo_training.start(settings.checkpoints_root, settings.demo_training,
                                  log_file=settings.data_dir / "logs" / "demo-training.log")

    embedded = None
    try:
        if not settings.redis_url:
            embedded = Embedded(settings.data_dir, workers=settings.workers)
            url = embedded.start()
            settings = settings.model_copy(update={"redis_url": url})
        log.info("Subnetscope at http://%s:%d (API docs at /docs), %d web process(es)", settings.host,
                 settings.port, settings.web_workers)
        if settings.web_workers > 1:
            _serve_processes(settings)
        else:
            config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                                    access_log=True, proxy_headers=True)
            try:
                uvicorn.Server(config).run()  # returns after SIGTERM
            except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
                pass
    finally:
        demo_training.stop(trainer)
        if embedded is not None:
            log.info("stopping the embedded worker(s) and Redis")
            embedded.stop()
    return 0


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM unwinds `cmd_serve` through its `finally`, which stops the trainer, then the workers,
    then Redis, in that order. uvicorn hands a SIGTERM it caught back to the handler it found once it
    has shut down (`signal.raise_signal`); with the default one there, serve died on the spot and its
    children all got their parent-death SIGTERM at once: Redis went first and a worker, still shutting
    down, was left retrying it. Later SIGTERMs are ignored so the ordered stop runs to its end (each
    step is bounded: a child that does not stop in time is killed)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _serve_processes(settings) -> None:
    """`settings.web_workers` uvicorn processes on one socket, each building the app from the
    environment (app.web.main:app_from_env); the supervisor restarts one that dies and stops them all
    on SIGINT/SIGTERM. Each has its own read cache and Dash callbacks; the state they share is in Redis."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    # The processes are spawned: they see what this one resolved (the embedded Redis) only through the environment.
    os.environ["SUBNETSCOPE_REDIS_URL"] = settings.redis_url
    config = uvicorn.Config("app.web.main:app_from_env", factory=True, host=settings.host, port=settings.port,
                            workers=settings.web_workers, log_level="info", access_log=True, proxy_headers=True)
    Multiprocess(config, sockets=[config.bind_socket()]).run()


def cmd_worker(args: argparse.Namespace) -> int:
    _logging()
    from app.cli.embedded import embedded_url
    from app.core.settings import get_settings
    from worker.process import run_worker

    settings = get_settings()
    if not settings.redis_url:
        url = embedded_url(settings.data_dir)
        if not url:
            print("subnetscope worker: set REDIS_URL (or start `subnetscope serve` on this machine first)",
                  file=sys.stderr)
            return 2
        settings = settings.model_copy(update={"redis_url": url})
    # Tasks read get_settings() themselves; make sure they see the same Redis.
    os.environ.setdefault("REDIS_URL", settings.redis_url)
    return run_worker(settings, burst=args.burst, name=args.name)
