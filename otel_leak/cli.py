"""The ``otel-leak`` command: builds the parser from the verbs' registry (:mod:`otel_leak.commands`) and
maps what a verb raises to one line and an exit code, here and nowhere else.

    otel-leak run [--report FILE] [--html FILE] [--quiet] [--guard MODE] [--guard-budget VALUE] -- COMMAND [ARGS...]
    otel-leak report PATH [--html FILE] [--json FILE]
    otel-leak check PATH

Exit codes: each verb's own (see ``otel-leak VERB --help``); 2 usage error or unusable input; 130
interrupted; 1 an internal error (one line; ``OTEL_LEAK_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

from otel_leak.commands import COMMANDS
from otel_leak.commands.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CommandError, UsageError



def _parser() -> argparse.ArgumentParser:
    from otel_leak.version import __version__

    p = argparse.ArgumentParser(
        prog="otel-leak",
        description="Find memory leaks in long-running Python workers with OpenTelemetry.",
    )
    p.add_argument("--version", action="version", version=f"otel-leak {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="{" + ",".join(COMMANDS) + "}")
    for name, module in COMMANDS.items():
        module.configure(sub.add_parser(name, help=module.HELP))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.verb is None:
        parser.print_usage(sys.stderr)
        print(f"otel-leak: error: a verb is required ({', '.join(COMMANDS)})", file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.verb].execute(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except CommandError as exc:
        if isinstance(exc, UsageError) and exc.usage:
            print(exc.usage, file=sys.stderr)
        print(f"otel-leak {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        print(f"otel-leak: internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        if os.environ.get("OTEL_LEAK_DEBUG"):
            raise
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
