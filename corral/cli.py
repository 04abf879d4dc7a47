"""The ``corral`` command: ``run``, ``deploy``, ``undeploy``, ``backends``, and the sub-commands plugins add."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn, cast

from corral.errors import CorralError, JobFailed, UsageError
from corral.job import Job

if TYPE_CHECKING:
    from corral.executor import ExecutorSpec
    from corral.settings import Settings


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line that points to ``--help`` (not the whole usage):
    ``corral run: error: the following arguments are required: INPUT, --out/-o (see: corral run --help)``.
    Sub-command parsers are of this class too (argparse makes them of their parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _add_settings(parser: argparse.ArgumentParser, out: str = "required") -> None:
    """Every option as a flag; ``out`` is "required", "optional" or "none" (no ``--out``)."""
    from corral.config import all_options

    if out != "none":
        parser.add_argument("--out", "-o", required=out == "required", metavar="OUT", help="output folder or URL")
    for option in all_options():
        names = [f"--{option.name}"] + ([option.short] if option.short else [])
        if option.name == "verbose":
            parser.add_argument(*names, dest="verbose", action="count", default=None, help=option.help)
        elif option.switch and option.default is True:
            parser.add_argument(*names, dest=option.dest, action=argparse.BooleanOptionalAction, default=None,
                                help=option.help)
        elif option.switch:
            parser.add_argument(*names, dest=option.dest, action="store_const", const=True, help=option.help)
        elif option.repeat:
            parser.add_argument(*names, dest=option.dest, action="append", metavar=option.metavar, help=option.help)
        else:
            parser.add_argument(*names, dest=option.dest, metavar=option.metavar, help=option.help)


def resolve_job(spec: str) -> type[Job]:
    """``path/to/job.py``, ``path/to/job.py:Class`` or ``module:Class`` -> the Job class."""
    import importlib

    from corral.worker import load_module_from_path

    target, _, class_name = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    if target.endswith(".py") or os.sep in target or os.path.exists(target):
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise UsageError(f"job file not found: {target}")
        name = os.path.splitext(os.path.basename(path))[0]
        where = target
        try:
            module = load_module_from_path(path, name)
        except Exception as exc:
            raise UsageError(f"cannot import job file {target}: {type(exc).__name__}: {exc}") from None
    else:
        where = target
        if os.getcwd() not in sys.path:  # as `python -m` does: modules of the current folder import
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"cannot import job module {target}: {exc}") from None
    if class_name:
        job_class = getattr(module, class_name, None)
        if not (isinstance(job_class, type) and issubclass(job_class, Job)):
            raise UsageError(f"{where} has no Job subclass named {class_name}")
        return job_class
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Job) and obj is not Job and obj.__module__ == module.__name__
    ]
    if not found:
        raise UsageError(f"{where} defines no corral.Job subclass")
    if len(found) > 1:
        names = ", ".join(sorted(c.__name__ for c in found))
        raise UsageError(f"{where} defines several Job subclasses ({names}): name one as {where}:Class")
    return found[0]


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"job", "inputs", "out", "command", "_command"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def _run(job_class: type[Job], args: argparse.Namespace) -> int:
    from corral.collector import setting_up
    from corral.config import load_settings
    from corral.driver import Driver
    from corral.executors.local import LOCAL_BACKENDS

    settings = load_settings(_flags(args))
    _logging(settings)
    local_inputs = not any("://" in url and not url.startswith("file://") for url in args.inputs)
    if _whole_process and local_inputs and settings.backend in LOCAL_BACKENDS:
        # no garbage collection until the tasks start (corral.collector): a local run sets up in moments,
        # and keeps what it makes; an object store's listing or a function's deploy (their clients'
        # garbage, request after request) collect as usual
        setting_up()
    manifest = Driver(job_class, args.inputs, args.out, settings).run()
    if not settings.quiet:
        _print_summary(manifest)
    return 0


def _logging(settings: Settings, say_what_is_done: bool = False) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(settings.verbose, logging.DEBUG)
    # -v/-vv: corral's own loggers; -vvv: its libraries' too (botocore dumps every request)
    library_level = logging.DEBUG if settings.verbose >= 3 else logging.WARNING
    logging.basicConfig(level=library_level, format="corral: %(message)s", stream=sys.stderr)
    for name in ("corral", "corral_emulator"):
        logging.getLogger(name).setLevel(level)
    if settings.verbose < 3:  # gcsfs logs a traceback of what it raises after its retries: corral says it once
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    if say_what_is_done and not settings.quiet and level > logging.INFO:
        logging.getLogger("corral").setLevel(logging.INFO)  # corral's own messages, not its libraries'


def _deploy(args: argparse.Namespace, remove: bool) -> int:
    """``corral deploy`` / ``corral undeploy``: the executor ``--backend`` names, deploying or removing
    the job (``Executor.deploy`` / ``Executor.undeploy``) without running it."""
    from corral.config import load_settings
    from corral.driver import create_executor, make_job_source

    settings = load_settings(_flags(args))
    _logging(settings, say_what_is_done=True)
    job_class = resolve_job(args.job)
    source = make_job_source(job_class, settings, getattr(args, "inputs", None) or (), getattr(args, "out", None))
    with create_executor(settings) as executor:
        if remove:
            executor.undeploy(source)
        else:
            executor.deploy(source)
    if not settings.quiet:
        done = "undeployed" if remove else "deployed"
        print(f"corral: {job_class.__module__}:{job_class.__qualname__} {done} ({settings.backend})", file=sys.stderr)
    return 0


def _print_summary(manifest: dict[str, Any]) -> None:
    err = sys.stderr
    if manifest["counters"]:
        print("Counters:", file=err)
        for group, names in manifest["counters"].items():
            print(f"  {group}", file=err)
            for name, value in names.items():
                print(f"    {name}: {value}", file=err)
    summary = (manifest.get("report") or {}).get("summary")
    if summary:
        print(f"corral: {summary}", file=err)
    tasks = sum(len(s["tasks"]) for s in manifest["stages"])
    details = [f"{tasks} tasks"]
    reused = (manifest.get("resumed") or {}).get("reused_tasks")
    if reused:
        details.append(f"{reused} reused from before the interruption")
    speculative = manifest.get("speculative") or {}
    if speculative.get("attempts"):
        details.append(f"{speculative['attempts']} speculative attempts, {speculative['won']} won")
    print(f"corral: job succeeded in {manifest['seconds']:.2f} s ({', '.join(details)}); output in "
          f"{manifest['out']}", file=err)


def _backends(args: argparse.Namespace) -> int:
    from corral.plugins import get_plugin_manager, plugin_distribution

    pm = get_plugin_manager()
    print("executors (--backend):")
    for impl in pm.hook.corral_executors.get_hookimpls():
        for spec in cast("list[ExecutorSpec]", impl.function()):
            print(f"  {spec.name:<12} {plugin_distribution(impl.plugin):<20} {spec.description}")
    print("filesystems (URL protocols; tested = corral's tests run jobs on it):")
    from corral.fs import ProtocolInfo

    for impl in pm.hook.corral_filesystem_protocols.get_hookimpls():
        provider = plugin_distribution(impl.plugin)
        for answer in cast("list[ProtocolInfo | str]", impl.function()):
            info = ProtocolInfo((answer,), provider) if isinstance(answer, str) else answer
            names = ", ".join(info.names)
            print(f"  {names:<14} {provider:<20} via {info.library:<10} {'tested' if info.tested else ''}".rstrip())
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; a plugin's sub-command is configured only when ``argv`` invokes it (or asks
    for help), so that plugins cost nothing at start-up when they are not used."""
    from corral.plugins import get_plugin_manager

    argv = sys.argv[1:] if argv is None else argv
    invoked = next((a for a in argv if not a.startswith("-")), None)

    parser = ArgumentParser(prog="corral", description="MapReduce in Python, anywhere.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a job", description="Run a MapReduce job.")
    run.add_argument("job", metavar="JOB", help="path/to/job.py, path/to/job.py:Class or module:Class")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="input files, folders, globs or URLs")
    if invoked in (None, "run"):
        _add_settings(run)
    deploy = sub.add_parser(
        "deploy", help="deploy a job to a remote backend without running it",
        description="Deploy JOB where --backend runs tasks (e.g. a Lambda function and its role). INPUT and "
                    "--out are optional: given, the deployment is granted access to them (`corral run` "
                    "grants its own locations anyway).")
    deploy.add_argument("job", metavar="JOB", help="path/to/job.py, path/to/job.py:Class or module:Class")
    deploy.add_argument("inputs", nargs="*", default=[], metavar="INPUT", help="input URLs the job will read")
    if invoked in (None, "deploy"):  # each command's ~60 options are made only for the command run
        _add_settings(deploy, out="optional")
    undeploy = sub.add_parser(
        "undeploy", help="remove what `corral deploy` / `corral run` deployed for a job",
        description="Remove what --backend deployed for JOB (e.g. the Lambda function, and the role and "
                    "policy corral created for it), and nothing else.")
    undeploy.add_argument("job", metavar="JOB", help="path/to/job.py, path/to/job.py:Class or module:Class")
    if invoked in (None, "undeploy"):
        _add_settings(undeploy, out="none")
    sub.add_parser("backends", help="list executors and filesystems, and who provides them")
    for commands in get_plugin_manager().hook.corral_commands():
        for command in commands:
            cmd_parser = sub.add_parser(command.name, help=command.help)
            if invoked == command.name:
                command.configure(cmd_parser)
            cmd_parser.set_defaults(_command=command)
    return parser


def _guard(action: Any) -> int:
    """Run ``action``; turn corral's errors into one line on stderr and their exit code."""
    try:
        return action()
    except CorralError as exc:
        label = "job failed" if isinstance(exc, JobFailed) else "error"
        print(f"corral: {label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from corral.interrupts import Interrupted

        resumable = isinstance(exc, Interrupted) and exc.resumable
        print("corral: interrupted; resume with --resume" if resumable else "corral: interrupted", file=sys.stderr)
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        if threading.active_count() > 1:  # a task on a thread that would not stop: do not wait for it
            os._exit(_flushed(code))
        return code
    except BrokenPipeError:  # output piped into a reader that stopped early (| head): quietly, as Python's docs do
        if not _stdout_reader_gone():  # another pipe (a worker's): not the user's doing
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush into the pipe
        return 1
    except OSError as exc:  # printing to a full disk (> /dev/full): one line, not a traceback
        from corral.fs import disk_full

        if not disk_full(exc):
            raise
        print(f"corral: error: cannot write: {exc}", file=sys.stderr)
        return 1


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll says so of its write end)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (captured)
        return False


def _flushed(code: int) -> int:
    """Flush stdout and stderr before an exit that will not (``os._exit``); the exit code, 1 or 120
    where what was printed did not all arrive (a closed pipe, a full disk), as Python's own exit."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = code or 1
        except OSError:
            code = code or 120
        except ValueError:  # closed by the job or a plugin: nothing to flush
            pass
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``corral`` console script."""

    def action() -> int:
        args = build_parser(argv).parse_args(argv)
        if args.command == "run":
            if _whole_process:  # the input folders are listed while the job and its settings load
                from corral.filesystems.local import prefetch_folders

                prefetch_folders(args.inputs)
            return _run(resolve_job(args.job), args)
        if args.command in ("deploy", "undeploy"):
            return _deploy(args, remove=args.command == "undeploy")
        if args.command == "backends":
            return _backends(args)
        return args._command.run(args)

    return _guard(action)


#: Whether this process is the ``corral`` command (``console_main``), not a caller of ``main``: then the
#: garbage collector waits while the driver sets up (``corral.collector.setting_up``).
_whole_process = False


def _leading_inputs(argv: list[str]) -> list[str]:
    """The inputs of ``corral run JOB INPUT... [options]`` given straight after the job: what the parser
    will take as inputs (positionals before any option), known before the plugins that shape the parser
    load. Nothing for another command, or an option before them (the parsed inputs are listed then)."""
    if len(argv) < 3 or argv[0] != "run" or argv[1].startswith("-"):
        return []
    inputs = []
    for arg in argv[2:]:
        if arg.startswith("-"):
            break
        inputs.append(arg)
    return inputs


def console_main() -> NoReturn:
    """The ``corral`` console script: ``main``, then a quick exit. The run is over by then, its output
    committed and its files closed; the interpreter's own teardown (a last garbage collection over what
    the run made, then every module's) took 60-70 ms after a run over 20,000 files. atexit handlers run
    and the standard streams are flushed as in a normal exit; with another thread still running, the
    normal exit waits for it (``_guard`` turns a closed pipe or a full disk into an exit code)."""
    global _whole_process
    _whole_process = True
    inputs = _leading_inputs(sys.argv[1:])
    if inputs:  # listed from now on, while the plugins load and the arguments are parsed
        from corral.filesystems.local import prefetch_folders

        prefetch_folders(inputs)
    code = main()
    if threading.active_count() > 1:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    os._exit(_flushed(code))


def run_job_main(job_class: type[Job], argv: list[str] | None = None) -> int:
    """``Job.main()``: ``python job.py INPUT... --out OUT [options]``."""

    def action() -> int:
        parser = ArgumentParser(prog=os.path.basename(sys.argv[0]), description=job_class.__doc__)
        parser.add_argument("inputs", nargs="+", metavar="INPUT", help="input files, folders, globs or URLs")
        _add_settings(parser)
        return _run(job_class, parser.parse_args(argv))

    return _guard(action)
