"""Errors of the evaluation stage. Each message names the input and what was expected."""

from __future__ import annotations


class EvalInputError(ValueError):
    """Ground truth or predictions that cannot be evaluated as given (malformed, inconsistent)."""


class IncompleteRunError(RuntimeError):
    """The run has not processed every ground-truth image; evaluating it would inflate AP."""
