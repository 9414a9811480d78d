"""The command line in-process, no server: help pages and the sweep's summary table."""

from __future__ import annotations

import io

import pytest

from janitor import cli
from janitor.operations.sweep import SweepReport


class TestOtherVerbs:
    @pytest.mark.parametrize("verb", [[], ["sweep"], ["run"], ["demo"], ["config"], ["diagnose"], ["restore"]])
    def test_help_has_examples(self, verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """Every help page reads well: a description under the usage line, and the top one shows examples."""
        with pytest.raises(SystemExit) as info:
            cli.main([*verb, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: celery-janitor" in out
        description = out.split("\n\n")[1]
        assert not description.startswith(("options:", "positional arguments:")), out
        assert len(description.split()) >= 8, description
        if not verb:
            assert "examples:" in out


class TestReportTable:
    def test_columns_line_up_whatever_the_widths(self) -> None:
        """Header and rows share column edges, with short kinds, long reasons and big counts alike."""
        for rows in (
            [("TTL set", "task", 12)],
            [("deleted", "task", 20_000_000), ("skipped", "value over JANITOR_MAX_VALUE_BYTES", 3)],
        ):
            lines = cli.report_table(rows)
            kind_at = {
                line.index(word) for line, word in zip(lines, ["kind / reason", *(r[1] for r in rows)], strict=True)
            }
            assert len(kind_at) == 1, lines
            assert len({len(line) for line in lines}) == 1, lines  # right-aligned counts end together
            assert lines[0].endswith("keys")

    def test_printed_report_uses_it(self) -> None:
        """The end-of-sweep summary prints the aligned table with each skip's reason."""
        report = SweepReport(dry_run=True, scanned=10, celery_keys=8, completed=True, duration_s=0.1)
        report.deleted["task"] = 5
        report.skipped["too_large"] = 1
        out = io.StringIO()
        cli._print_report(report, out)
        table = [line for line in out.getvalue().splitlines() if line.startswith("  ") and "value bytes" not in line]
        assert table == cli.report_table(
            [("would delete", "task", 5), ("skipped", "over JANITOR_MAX_VALUE_BYTES, unreadable from its edges", 1)]
        )
