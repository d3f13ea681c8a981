"""pytest hooks of every test folder (tests/python, tests/operator/python)."""

from __future__ import annotations

import pytest

OPT_IN_MARKERS = ("network", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips the tests marked network or slow unless a ``-m`` expression was given."""
    if config.option.markexpr:
        return
    for item in items:
        marked = [name for name in OPT_IN_MARKERS if item.get_closest_marker(name)]
        if marked:
            reason = f"marked {', '.join(marked)}: run with -m {marked[0]} (scripts/test.sh does)"
            item.add_marker(pytest.mark.skip(reason=reason))
