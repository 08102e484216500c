"""Prints how many generated inputs each fuzz target saw (issue #18 item 4 reports these counts)."""

from fuzzing import COUNTS, OUTCOMES


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if COUNTS:
        terminalreporter.write_sep("-", f"fuzz: {sum(COUNTS.values())} generated inputs")
        for target, n in sorted(COUNTS.items()):
            kinds = ", ".join(f"{k} {v}" for (t, k), v in sorted(OUTCOMES.items()) if t == target)
            terminalreporter.write_line(f"{target:32s} {n:6d}" + (f"  ({kinds})" if kinds else ""))
