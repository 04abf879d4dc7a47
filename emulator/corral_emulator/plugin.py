"""corral plugin: adds ``corral emulator serve|build-base|prune`` to the ``corral`` command.

Imported by every ``corral`` invocation, so it imports nothing heavy: the command's module (docker,
aiohttp) loads only when ``corral emulator`` itself runs.
"""

from __future__ import annotations

import argparse

from corral import Command, hookimpl


def _configure(parser: argparse.ArgumentParser) -> None:
    from corral_emulator import cli

    cli.configure(parser)


def _run(args: argparse.Namespace) -> int:
    from corral_emulator import cli

    return cli.run(args)


@hookimpl
def corral_commands() -> list[Command]:
    return [
        Command(
            name="emulator",
            help="a local AWS Lambda and Cloud Functions (their APIs + Docker containers): serve, build-base, prune",
            configure=_configure,
            run=_run,
        )
    ]
