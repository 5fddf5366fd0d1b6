"""``psr worker``: host rewards on this machine and serve their Redis queues."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from shared.cli_args import port_number, redis_url

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "worker",
        help="host rewards and consume their jobs from Redis (scale out by starting more)",
        description="Load the rewards of a config and score the jobs a `psr serve --redis` front enqueues. "
        "Start as many as you like, on any machine that reaches Redis.",
    )
    p.add_argument("--config", required=True, help="rewards.yaml (the same file the front uses)")
    p.add_argument("--redis", type=redis_url, default=os.environ.get("PSR_REDIS_URL"),
                   help="redis://[:password@]host:port/db, or rediss:// for TLS (default: $PSR_REDIS_URL)")
    p.add_argument("--rewards", default="", help="comma-separated reward names to host (default: all)")
    p.add_argument("--device", default=None, help="override every hosted reward's device, e.g. cuda:0")
    p.add_argument("--metrics-port", type=port_number, default=0, help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set queue.max_attempts=2")
    p.add_argument("--check", action="store_true",
                   help="validate the config, local model paths and devices without loading weights or connecting")
    p.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from reward_server.config import ServerConfig
    from reward_server.models.device import resolve_device
    from reward_server.queue.worker import Worker, connect_sync
    from reward_server.registry import build_rewards, check_report, check_rewards, load_rewards
    from shared.config import ConfigError, load_config

    if not args.redis and not args.check:
        print("psr worker: give --redis URL (or set PSR_REDIS_URL)", file=sys.stderr)
        return 2
    try:
        if args.device:
            try:
                resolve_device(args.device)
            except (RuntimeError, ValueError) as exc:
                raise ConfigError(f"--device {args.device}: {exc}; use --device cpu or leave --device out") from None
        config = load_config(ServerConfig, args.config, args.overrides)
        if args.device:
            config.rewards = {n: s.model_copy(update={"device": args.device}) for n, s in config.rewards.items()}
        only = [n.strip() for n in args.rewards.split(",") if n.strip()] or None
        rewards = build_rewards(config, only)
        check_rewards(rewards)
    except (ConfigError, KeyError) as exc:
        print(f"psr worker: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(check_report(args.config, rewards))
        return 0
    load_rewards(rewards)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    client = connect_sync(args.redis)
    worker = Worker(client, rewards, config.queue, config.limits.image_limits(),
                    max_pixels_in_flight=config.limits.max_pixels_in_flight)

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the batch in hand, then exiting", signum)
        worker.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
    client.close()
    return 0
