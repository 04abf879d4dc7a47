"""The ``emulator`` command line: ``serve`` and ``build-base`` (``corral emulator ...`` or ``corral-emulator``)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading

from corral_emulator.emulator import DEFAULT_BASE_IMAGE, Emulator, default_base_image, docker_client, prune_orphans
from corral_emulator.errors import EmulatorError
from corral_emulator.image import build_base_image


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be at least 0")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the sub-commands (serve, build-base, prune) to ``parser``."""
    sub = parser.add_subparsers(dest="emulator_command", metavar="{serve,build-base,prune}")
    sub.required = True
    serve = sub.add_parser("serve", help="serve Lambda's and Cloud Functions' APIs on 127.0.0.1 and run functions "
                                         "in Docker containers")
    serve.add_argument("--port", type=int, default=9001,
                       help="port of both APIs (Lambda, Cloud Functions v2) (default 9001; 0 = any)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1); an address other machines can reach "
                            "needs --allow-remote-code-execution")
    serve.add_argument("--allow-remote-code-execution", action="store_true",
                       help="serve on a --host that is not loopback: the APIs run whatever code they are sent, "
                            "without authentication, so anyone who reaches the port can run code on this machine")
    serve.add_argument("--max-concurrency", type=_positive_int, default=10,
                       help="requests running at once (both platforms) before 429 (default 10)")
    serve.add_argument("--mount", action="append", default=[], metavar="PATH",
                       help="host folder mounted read-write at the same path in every container (repeatable)")
    serve.add_argument("--base-image", default=None,
                       help=f"image with python3 for the containers (default $CORRAL_EMULATOR_BASE_IMAGE "
                            f"or {DEFAULT_BASE_IMAGE})")
    serve.add_argument("--idle-timeout", type=float, default=300.0,
                       help="seconds an idle warm container is kept (default 300)")
    serve.add_argument("--region", default=None, help="region in ARNs and AWS_REGION (default from env or us-east-1)")
    serve.add_argument("--log-dir", default=None, help="folder for the functions' logs (one file per function)")
    serve.add_argument("--quiet", action="store_true", help="do not echo the functions' logs to stderr")
    serve.add_argument("--key-file", default=None, metavar="PATH",
                       help="write a service-account key file for google-auth (its token_uri is this emulator) "
                            "to PATH (default: a file in the emulator's temporary folder)")
    serve.add_argument("--cloud-cpu", action=argparse.BooleanOptionalAction, default=True,
                       help="cap each container's CPU as the platform does (Lambda: 1 vCPU at 1769 MB, in "
                            "proportion below; GCF: availableCpu); --no-cloud-cpu lets every container use all "
                            "the host's CPUs (default: on)")
    serve.add_argument("--tmp-cap", action=argparse.BooleanOptionalAction, default=True,
                       help="make a Lambda function's /tmp a tmpfs of its EphemeralStorage size, so that writing "
                            "past it fails with 'No space left on device' (its pages count against the memory "
                            "limit); --no-tmp-cap keeps /tmp on the container's disk, uncapped (default: on)")
    serve.add_argument("--event-retry-delay", type=_seconds, default=60.0, metavar="SECONDS",
                       help="wait before retrying a failed Event invocation, doubled before the second retry "
                            "(Lambda: 60, then 120) (default 60)")
    serve.add_argument("--throttle", type=float, default=None, metavar="FRACTION",
                       help="fault injection: answer 429 to this fraction of invocations, e.g. 0.33 "
                            "(default $CORRAL_EMULATOR_THROTTLE or 0)")
    serve.set_defaults(emulator_func=run_serve)
    build = sub.add_parser("build-base", help="build the base image from Debian packages (debootstrap, offline)")
    build.add_argument("--tag", default=DEFAULT_BASE_IMAGE, help=f"image tag (default {DEFAULT_BASE_IMAGE})")
    build.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    build.add_argument("--mirror", default=None, help="Debian mirror (default: the one apt uses)")
    build.set_defaults(emulator_func=run_build_base)
    prune = sub.add_parser("prune", help="remove containers left by emulators that are no longer running")
    prune.set_defaults(emulator_func=run_prune)


def run(args: argparse.Namespace) -> int:
    try:
        return args.emulator_func(args)
    except EmulatorError as exc:
        print(f"corral emulator: {exc}", file=sys.stderr)
        return 1


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches only this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def run_serve(args: argparse.Namespace) -> int:
    remote = not is_loopback(args.host)
    if remote and not args.allow_remote_code_execution:
        print(f"corral emulator: error: --host {args.host} is reachable from other machines, and the emulator "
              "runs any code sent to its APIs without authentication: add --allow-remote-code-execution to "
              "serve it anyway (only on a network you trust)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    emulator = Emulator(
        port=args.port,
        host=args.host,
        base_image=args.base_image or default_base_image(),
        max_concurrency=args.max_concurrency,
        mounts=args.mount,
        idle_timeout=args.idle_timeout,
        region=args.region,
        log_dir=args.log_dir,
        log_stream=None if args.quiet else sys.stderr,
        throttle_fraction=args.throttle,
        cloud_cpu=args.cloud_cpu,
        tmp_cap=args.tmp_cap,
        event_retry_delay=args.event_retry_delay,
    )
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        endpoint = emulator.start()
        if remote:
            print(f"corral emulator: WARNING: serving {endpoint} on {args.host} without authentication: anyone "
                  "who can reach it can run code on this machine", file=sys.stderr, flush=True)
        print(f"corral emulator: Lambda API on {endpoint} (image {emulator.base_image}); Ctrl-C to stop", flush=True)
        print(f'  boto3.client("lambda", endpoint_url="{endpoint}", region_name="{emulator.region}")', flush=True)
        print(f"corral emulator: Cloud Functions v2 API on {endpoint} (OAuth token endpoint {endpoint}/token)",
              flush=True)
        print(f'  functions_v2.FunctionServiceClient(transport="rest", client_options={{"api_endpoint": '
              f'"{endpoint}"}}, credentials=AnonymousCredentials())', flush=True)
        key_file = write_key_file(emulator, args.key_file)
        print(f"  ID tokens for the functions' URLs: export GOOGLE_APPLICATION_CREDENTIALS={key_file}", flush=True)
        while not stop.wait(0.5):
            pass
        print("corral emulator: stopping, removing containers...", flush=True)
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def write_key_file(emulator: Emulator, path: str | None) -> str:
    """Write a service-account key of ``emulator`` (readable by this user only); return its path."""
    assert emulator.workdir is not None
    target = os.path.abspath(path) if path else str(emulator.workdir / "service-account.json")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(emulator.service_account_key(), f, indent=2)
    except OSError as exc:
        raise EmulatorError(f"cannot write the key file {target}: {exc.strerror}") from None
    return target


def run_build_base(args: argparse.Namespace) -> int:
    build_base_image(tag=args.tag, force=args.force, mirror=args.mirror)
    return 0


def run_prune(args: argparse.Namespace) -> int:
    client = docker_client()
    try:
        print(f"removed {prune_orphans(client)} containers")
    finally:
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-emulator",
                                     description="A local AWS Lambda and Cloud Functions in Docker containers")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
