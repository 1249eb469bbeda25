"""The inferwatch command: help for every subcommand, and the decorator demo."""

from __future__ import annotations

import pytest

from inferwatch import cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert "usage: inferwatch " + command in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_building_the_parser_creates_no_series() -> None:
    """Importing every command module must not add series to the registry a server exposes."""
    from prometheus_client import REGISTRY

    def series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {
            (s.name, tuple(sorted(s.labels.items())))
            for family in REGISTRY.collect()
            if not family.name.startswith(("python_", "process_"))
            for s in family.samples
        }

    before = series()
    cli.build_parser()
    assert series() == before
