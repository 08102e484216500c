"""Prints how many generated inputs each fuzz target saw (issue #18 item 4 reports these counts)."""

from fuzzing import COUNTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if COUNTS:
        terminalreporter.write_sep("-", f"fuzz: {sum(COUNTS.values())} generated inputs")
        for target, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{target:40s} {n:7d}")
