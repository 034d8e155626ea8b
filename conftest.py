"""Shared by tests/ and parity_tests/: imported by pytest before any test module.

``import dualml`` comes first on purpose: ``dualml/__init__`` holds the zlib-before-paddle guard
(shared STACK.md), and several test modules and ``tests/fixtures/handwritten_paddle.py`` import
paddle directly.

The backends a run uses come from ``dualml.testing.selected_backends`` (the installed adapters,
narrowed by ``DUALML_TEST_BACKENDS``). A test that runs frameworks by name says so with
``@pytest.mark.backends("torch", "paddle")`` and is skipped, with the reason, when the selection
leaves one of them out.
"""
import pytest

import dualml  # noqa: F401  - before any test module: the zlib guard (pytest itself never imports paddle)
from dualml.errors import ConfigError
from dualml.testing import requested_backends, unselected_reason


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): the test runs these backends by name; skipped "
                            "when DUALML_TEST_BACKENDS leaves one of them out")
    try:
        requested_backends()  # a misspelt DUALML_TEST_BACKENDS stops the run in one line, before collection
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = [n for mark in item.iter_markers("backends") for n in mark.args]
        reason = unselected_reason(names) if names else None
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
