"""The `iotcore` command: one package, several roles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from iotcore.config import Settings, UnknownVariables, check_environment, get_settings
from iotcore.platform.context import Platform
from iotcore.platform.http.server import ApiRunner, tune_gc_for_serving
from iotcore.platform.logging import configure_logging
from iotcore.platform.migrations import Migrator, check_directory
from iotcore.tenants import cli as purge_cli
from iotcore.tools import factory_client, simulate, smoke

log = logging.getLogger("iotcore.cli")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def wait_for_shutdown() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def start_api(settings: Settings, platform: Platform | None = None) -> web.AppRunner:
    from iotcore.app import create_app

    # /metrics and the broker hooks on their own port (IOT_METRICS_PORT), kept off the public
    # one; both ports being the same serves everything on one.
    split = settings.metrics_port != settings.http_port
    app = create_app(settings, platform, internal_port=settings.metrics_port if split else None)
    runner = ApiRunner(app, settings, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_address=True)
    await site.start()
    if split:
        internal = web.TCPSite(
            runner, settings.http_host, settings.metrics_port, reuse_address=True
        )
        await internal.start()
    tune_gc_for_serving()
    log.info("api listening", extra={"host": settings.http_host, "port": settings.http_port})
    print(f"iotcore api listening on http://{settings.http_host}:{settings.http_port}", flush=True)
    print(
        f"iotcore internal listener (/metrics, /api/v1/mqtt/*) on "
        f"http://{settings.http_host}:{settings.metrics_port}",
        flush=True,
    )
    return runner


async def run_api(settings: Settings, args: argparse.Namespace) -> None:
    runner = await start_api(settings)
    try:
        await wait_for_shutdown()
    finally:
        await runner.cleanup()


async def start_ops_server(platform: Platform) -> web.AppRunner:
    """/metrics and health on IOT_METRICS_PORT for the roles that do not serve the API."""
    from iotcore.platform.ops_app import create_ops_app

    settings = platform.settings
    runner = ApiRunner(create_ops_app(platform), settings)
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.metrics_port).start()
    return runner


async def run_ingest(settings: Settings, args: argparse.Namespace) -> None:
    from iotcore.mqtt.consumer import IngestRole
    from iotcore.mqtt.probe import SharedSubscriptionsUnsupported, check_shared_subscriptions

    if settings.mqtt_shared_subscription:
        try:
            await check_shared_subscriptions(settings)
        except SharedSubscriptionsUnsupported as exc:
            print(
                f"iotcore ingest: {exc}. Use a broker with shared subscriptions (EMQX, "
                "Mosquitto 2), or run a single consumer with IOT_MQTT_SHARED_SUBSCRIPTION=false.",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2) from exc
    platform = Platform.from_settings(settings)
    await platform.start()
    role = IngestRole(platform)
    await role.start()
    ops = await start_ops_server(platform)
    print(f"iotcore ingest consuming from {settings.mqtt_url}", flush=True)
    try:
        await wait_for_shutdown()
    finally:
        await ops.cleanup()
        await role.stop()
        await platform.close()


async def run_maintain(settings: Settings, args: argparse.Namespace) -> None:
    from iotcore.maintenance.jobs import (
        MaintenanceStatus,
        end_expired_rotations,
        expire_due_commands,
        expire_stale_presence,
        run_forever,
        run_once,
    )
    from iotcore.tenants.purge import run_worker

    platform = Platform.from_settings(settings)
    await platform.start()
    try:
        if args.once:
            report = await run_once(settings)
            expired = await end_expired_rotations(settings)
            commands = await expire_due_commands(settings)
            stale = await expire_stale_presence(settings, platform.redis)
            print(
                f"maintenance: {report}, rotations_expired={expired}, "
                f"commands_expired={commands}, presence_stale={stale}",
                flush=True,
            )
            await run_worker(platform, once=True)
            return
        status = MaintenanceStatus()
        # Ready (and healthy to compose) only while the last pass succeeded.
        platform.readiness_checks["maintenance"] = status.check
        ops = await start_ops_server(platform)
        print(f"iotcore maintain: metrics on port {settings.metrics_port}", flush=True)
        tasks = [
            asyncio.create_task(run_forever(settings, status)),
            asyncio.create_task(run_worker(platform)),
        ]
        try:
            await wait_for_shutdown()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ops.cleanup()
    finally:
        await platform.close()


async def run_broker(settings: Settings, args: argparse.Namespace) -> None:
    """The embedded broker alone: it writes telemetry itself, through its own writer."""
    from iotcore.devices.registry import DeviceRegistry
    from iotcore.mqtt.broker.server import start_broker
    from iotcore.telemetry.ingest.service import TelemetryIngest
    from iotcore.telemetry.ingest.writer import TelemetryWriter

    platform = Platform.from_settings(settings)
    await platform.start()
    registry = DeviceRegistry(platform)
    writer = TelemetryWriter(platform)
    await registry.start()
    await writer.start()
    broker = await start_broker(platform, registry, TelemetryIngest(platform, registry, writer))
    ops = await start_ops_server(platform)
    print(f"iotcore broker listening on mqtt://{broker.address}", flush=True)
    try:
        await wait_for_shutdown()
    finally:
        await ops.cleanup()
        await broker.stop()
        await writer.stop()
        await registry.close()
        await platform.close()


async def run_all(settings: Settings, args: argparse.Namespace) -> None:
    """Single node: the API, the embedded broker and maintenance, sharing one platform. The
    broker hands telemetry to the API's writer itself: no consumer, no broker queue."""
    from iotcore.maintenance.jobs import run_forever
    from iotcore.mqtt.broker.server import start_broker
    from iotcore.telemetry.ingest.service import TELEMETRY_INGEST_KEY
    from iotcore.tenants.purge import run_worker

    platform = Platform.from_settings(settings)
    await platform.start()
    runner = await start_api(settings, platform)
    ingest = runner.app[TELEMETRY_INGEST_KEY]
    broker = await start_broker(platform, ingest.registry, ingest)
    print(f"iotcore broker listening on mqtt://{broker.address}", flush=True)
    maintenance = asyncio.create_task(run_forever(settings))
    jobs = asyncio.create_task(run_worker(platform))
    try:
        await wait_for_shutdown()
    finally:
        maintenance.cancel()
        jobs.cancel()
        await asyncio.gather(jobs, return_exceptions=True)
        await broker.stop()
        await runner.cleanup()
        await platform.close()


def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "check":
        problems = check_directory(args.dir or settings.migrations_dir)
        for problem in problems:
            print(f"migration check: {problem}", file=sys.stderr)
        if not problems:
            print("migrations: numbering and rollbacks are in order")
        return 1 if problems else 0
    migrator = Migrator(settings.database_owner_url, args.dir or settings.migrations_dir)
    if args.action == "up":
        applied = migrator.up()
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )
    elif args.action == "down":
        rolled = migrator.down(args.steps)
        print(
            f"rolled back {len(rolled)} migration(s)" + (": " + ", ".join(rolled) if rolled else "")
        )
    else:
        for item in migrator.status():
            print(f"{'applied' if item.applied else 'pending'}  {item.migration_id}")
    return 0


AsyncRole = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]

ASYNC_ROLES: dict[str, AsyncRole] = {
    "api": run_api,
    "ingest": run_ingest,
    "broker": run_broker,
    "maintain": run_maintain,
    "run": run_all,
    "simulate": simulate.run_simulation,
}


CLIENT_COMMANDS = {"factory": factory_client.run_factory, "device": factory_client.run_device}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotcore", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("api", help="serve /api/v1, /metrics and health")
    roles.add_parser("ingest", help="consume telemetry from MQTT and store it")
    roles.add_parser("broker", help="embedded MQTT broker (single node, development)")
    maintain = roles.add_parser("maintain", help="partitions, retention, pruning")
    maintain.add_argument("--once", action="store_true", help="run every job once and exit")
    roles.add_parser("run", help="all roles in one process (single node)")
    migrate = roles.add_parser("migrate", help="database migrations")
    migrate.add_argument("--dir", type=_path, default=None, help="migrations directory")
    actions = migrate.add_subparsers(dest="action", required=True)
    actions.add_parser("up", help="apply every pending migration")
    down = actions.add_parser("down", help="roll back the last N migrations")
    down.add_argument("steps", type=int)
    actions.add_parser("status", help="list migrations, applied or pending")
    actions.add_parser("check", help="fail on misnumbered migrations or missing rollbacks")
    factory_client.add_parsers(roles)
    purge_cli.add_parser(roles)
    simulate.add_parser(roles)
    smoke.add_parser(roles)
    return parser


def _path(value: str) -> object:
    from pathlib import Path

    return Path(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role in CLIENT_COMMANDS:
        return asyncio.run(CLIENT_COMMANDS[args.role](args))
    try:
        settings = get_settings()
        unknown = check_environment(settings)
    except ValidationError as exc:
        for err in exc.errors():
            print(f"iotcore: configuration error: {err['msg']}", file=sys.stderr)
        return 2
    except UnknownVariables as exc:
        print(f"iotcore: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if unknown:
        log.warning("unknown settings ignored", extra={"variables": unknown})
    if args.role == "migrate":
        return run_migrate(settings, args)
    if args.role == "smoke":
        return asyncio.run(smoke.run_smoke_command(settings, args))
    if args.role == "purge":
        return asyncio.run(purge_cli.run_purge(settings, args))
    _install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(ASYNC_ROLES[args.role](settings, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
