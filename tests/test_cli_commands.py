"""The verb registry and the one place errors become exit codes."""

from __future__ import annotations

import argparse

import pytest

from otel_leak import cli
from otel_leak.commands import COMMANDS
from otel_leak.commands.errors import CommandError, UsageError


def test_every_verb_is_a_module_with_the_command_protocol(capsys):
    assert set(COMMANDS) >= {"run", "report", "check"}
    for name, module in COMMANDS.items():
        assert module.NAME == name and module.HELP and module.__doc__
        p = argparse.ArgumentParser()
        module.configure(p)  # declares its arguments without side effects
        assert callable(module.execute)
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


@pytest.mark.parametrize("exc, code", [(CommandError("cannot write x"), 1), (CommandError("odd", exit_code=3), 3),
                                       (UsageError("bad PATH", usage="usage: otel-leak check PATH"), 2)])
def test_an_error_a_verb_raises_is_one_line_and_its_exit_code(monkeypatch, capsys, exc, code):
    def boom(args):
        raise exc

    monkeypatch.setattr(COMMANDS["check"], "execute", boom)
    assert cli.main(["check", "whatever"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"otel-leak check: error: {exc}"
    assert len(err) == (2 if isinstance(exc, UsageError) else 1)
    assert "Traceback" not in "\n".join(err)


def test_unreadable_input_is_exit_2_with_one_line(tmp_path, capsys):
    for verb in ("report", "check"):
        assert cli.main([verb, str(tmp_path / "missing.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot read" in err[0] and "missing.json" in err[0], err


def test_an_unexpected_exception_is_an_internal_error_line(monkeypatch, capsys):
    monkeypatch.delenv("OTEL_LEAK_DEBUG", raising=False)
    monkeypatch.setattr(COMMANDS["report"], "execute", lambda args: 1 / 0)
    assert cli.main(["report", "x"]) == 1
    assert capsys.readouterr().err.strip() == "otel-leak: internal error: ZeroDivisionError: division by zero"


def test_short_lived_children_of_a_reporting_process_are_not_unreported():
    from otel_leak.supervisor.processes import Seen, Tree
    from otel_leak.supervisor.run import _add_unreported

    tree = Tree.__new__(Tree)
    tree.root_pid = 10
    tree.seen = {
        10: Seen(10, 0.0, 60.0, python=True),
        11: Seen(11, 5.0, 5.4, python=True, ppid=10),  # a work horse: one job, then os._exit
        12: Seen(12, 5.0, 40.0, python=True, ppid=10),  # a long-lived child that never wrote: said
        13: Seen(13, 6.0, 6.2, python=True, ppid=99),  # short-lived, but its parent did not report: said
    }
    report = {"processes": [{"pid": 10}], "incomplete": False}
    _add_unreported(report, tree, 0.0)
    assert [p["pid"] for p in report["processes"]] == [10, 12, 13] and report["incomplete"] is True
    report = {"processes": [{"pid": 10}], "incomplete": False}
    tree.seen = {10: tree.seen[10], 11: Seen(11, 5.0, 5.4, python=True, ppid=10)}
    _add_unreported(report, tree, 0.0)
    assert [p["pid"] for p in report["processes"]] == [10] and report["incomplete"] is False
