"""The project's errors. Each carries the exit code the CLI gives it (see ``mrcnn_batch.cli``),
so that a documented code always means what the README says and anything else is a bug (1)."""

from __future__ import annotations


class MrcnnBatchError(Exception):
    """Base of the errors a user can act on; ``exit_code`` is the CLI's."""

    exit_code = 1


class UsageError(MrcnnBatchError, ValueError):
    """Bad usage or input: the message names the input and what was expected."""

    exit_code = 2


class RunRefused(MrcnnBatchError, RuntimeError):
    """The output holds a run made with other settings, another driver runs it, or this driver
    lost its lease to another."""

    exit_code = 3


class RunDamaged(RunRefused):
    """A file of the run directory that must parse does not (``_run.json``): the way out is named."""


class StorageError(MrcnnBatchError, OSError):
    """A file of the run directory could not be read or written; the system's error verbatim."""

    exit_code = 6


class WorkerStartError(MrcnnBatchError, RuntimeError):
    """A worker could not load the model: every worker would fail the same way."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by SIGTERM: a ``KeyboardInterrupt``, as for SIGINT, so
    that no ``except Exception`` swallows it and Ray's blocking calls let it through (Ray re-raises
    a plain ``KeyboardInterrupt`` from inside them: ``ray_session.stop_signal()`` remembers
    which signal it was). The CLI exits ``128 + signum`` (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
