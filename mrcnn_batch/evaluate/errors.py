"""Errors of the evaluation stage. Each message names the input and what was expected; each
carries the CLI's exit code (see ``mrcnn_batch.errors``)."""

from __future__ import annotations

from mrcnn_batch.errors import MrcnnBatchError, UsageError


class EvalInputError(UsageError):
    """Ground truth or predictions that cannot be evaluated as given (malformed, inconsistent)."""


class IncompleteRunError(MrcnnBatchError, RuntimeError):
    """The run has not processed every ground-truth image; evaluating it would inflate AP."""

    exit_code = 5
