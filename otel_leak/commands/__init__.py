"""The ``otel-leak`` verbs: one module per verb, each with ``NAME``, ``HELP``, ``configure(parser)`` and
``execute(args) -> exit code``; :data:`COMMANDS` is the registry ``otel_leak.cli`` builds its parser from.

A verb stops early by raising :class:`~otel_leak.commands.errors.CommandError` (or ``UsageError``): the CLI
prints its one line and exits with its code; a verb never prints a traceback.
"""

from __future__ import annotations

from otel_leak.commands import baseline, check, compare, gate, record, report, run

COMMANDS = {m.NAME: m for m in (run, report, check, baseline, compare, gate, record)}
