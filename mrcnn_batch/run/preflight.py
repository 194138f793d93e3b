"""Checks made before a run loads a model or writes anything: its storage answers with the
options given, its output is a place for a run directory, and a run already there was made
with these settings (:func:`check_settings`).

Each refusal of the storage is a :class:`~mrcnn_batch.errors.UsageError` (exit 2) that names the
URL and the option, endpoint, bucket or file concerned, and says what was expected:

* a storage option the filesystem does not take (``{"nosuch": 1}`` on S3);
* an endpoint that does not answer (nothing listening, an unknown host, a connect timeout);
* an output that is an existing file, or lies under one;
* an output in a bucket (or container) that does not exist: a run never creates buckets.

Each URL is probed with one metadata request (``info``) on a filesystem instance of its own.
On S3 that instance gets a short connect timeout and few retries where the options set none,
so that a dead endpoint is reported in seconds rather than after minutes of botocore's and
s3fs's retries; the run itself keeps the options exactly as given, and its retries. Any other
error of a probe (a refused permission, throttling) is left to the run, which reports it with
the file it concerns.
"""

from __future__ import annotations

import logging
import posixpath
import re
import socket
from typing import Any

import fsspec

from mrcnn_batch.config import RunConfig, same_identity
from mrcnn_batch.errors import RunDamaged, RunRefused, UsageError
from mrcnn_batch.models.registry import get_spec
from mrcnn_batch.models.weights import (
    WeightsUnavailable,
    read_weight_bytes,
    weights_sha256,
)
from mrcnn_batch.run.layout import RUN_JSON, RunDir

log = logging.getLogger(__name__)

# Protocols whose first path component is a bucket (or container) that a write cannot create.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
# Botocore settings of an S3 probe, where the user's storage options set none.
PROBE_S3_CONFIG: dict[str, Any] = {"connect_timeout": 5, "retries": {"max_attempts": 2}}
PROBE_S3FS_RETRIES = 1  # s3fs's own loop around each call (5 by default)

_UNKNOWN: dict[str, Any] = {"type": "unknown"}  # a probe that neither found nor missed the path


def check_storage(config: RunConfig) -> None:
    """Refuse ``config`` now if its input storage or its output cannot serve a run."""
    check_reachable(config.input.url, config.input.storage_options, role="input")
    check_output(config.output, config.output_storage_options)


def check_reachable(url: str, storage_options: dict[str, Any], *, role: str) -> None:
    """Refuse ``url`` if its filesystem rejects ``storage_options`` or its endpoint does not
    answer. Whether ``url`` exists is not checked here (a glob, a prefix to list)."""
    if "::" in url:  # a chained URL (tar::s3://...): opening it reads the archive; left to the run
        return
    fs, path = _filesystem(url, storage_options, role=role)
    _info(fs, path, url=url, storage_options=storage_options, role=role)


def check_output(url: str, storage_options: dict[str, Any]) -> None:
    """Refuse an output that is a file or lies under one, or whose bucket does not exist."""
    if "::" in url:
        return
    fs, path = _filesystem(url, storage_options, role="output")

    def info(p: str) -> dict[str, Any] | None:
        return _info(fs, p, url=url, storage_options=storage_options, role="output")

    found = info(path)
    if found is not None:
        if found.get("type") == "file":
            raise UsageError(f"output {url} is a file; expected a directory (a run directory, or a place to make one)")
        return
    protocol = _protocol(url)
    if protocol in OBJECT_STORES:
        bucket = path.split("/", 1)[0]
        if bucket and (bucket == path or info(bucket) is None):
            raise UsageError(
                f"output {url}: bucket {bucket!r} does not exist at {_endpoint(protocol, storage_options)}; "
                "create it first (a run never creates buckets)"
            )
        return
    parent = posixpath.dirname(path.rstrip("/"))
    while parent and parent != path:  # the nearest existing ancestor must be a directory
        found = info(parent)
        if found is not None:
            if found.get("type") == "file":
                raise UsageError(f"output {url}: {parent} is a file, so no directory can be made under it")
            return
        path, parent = parent, posixpath.dirname(parent)


def check_settings(config: RunConfig, *, overwrite: bool = False) -> None:
    """Refuse (:class:`~mrcnn_batch.errors.RunRefused`, exit 3) an output that holds a run made
    with other settings, before torch or the model loads: the stored identity against this
    config's, the weights named by the SHA-256 of their bytes. Only where those bytes are at hand
    without torch or a download (a local file, the package's own weights); otherwise, and for a
    damaged run, the driver decides when the weights load (``run.driver.prepare``), with the
    same message. Nothing to check with ``overwrite``."""
    source = config.predict.weights or get_spec(config.predict.model).default_weights
    if overwrite or source is None or not _at_hand(source):
        return
    run = RunDir(config.output, config.output_storage_options)
    if not run.exists(RUN_JSON):
        return
    try:
        meta = run.run_meta()
        data = read_weight_bytes(source, storage_options=config.input.storage_options)
    except (RunDamaged, WeightsUnavailable):
        return  # the driver says what is wrong, as it loads them
    identity = config.identity(weights_sha256=weights_sha256(data))
    if not same_identity(meta.identity, identity):
        raise RunRefused(settings_refusal(config.output, meta.identity, identity))


def _at_hand(source: str) -> bool:
    """Whether weights are read without torch or a download: the package's own, or a local file
    (not torchvision's names, found through torchvision, nor remote files)."""
    if source.startswith("package://"):
        return True
    return not source.startswith("torchvision:") and _protocol(source) == "file"


def settings_refusal(output: str, old: dict, new: dict) -> str:
    """The refusal of an output holding a run of identity ``old`` by settings of identity ``new``."""
    diffs = [
        f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return (
        f"{output} holds a run made with other settings ({'; '.join(diffs)}). Use another"
        " output, or pass --overwrite to replace it (only the run's own files are removed)."
    )


def _filesystem(url: str, storage_options: dict[str, Any], *, role: str) -> tuple[Any, str]:
    """The probe's own filesystem instance for ``url``, and the path in it."""
    protocol = _protocol(url)
    options = dict(storage_options, skip_instance_cache=True)
    if protocol in ("s3", "s3a") and isinstance(options.get("config_kwargs", {}), dict):
        options["config_kwargs"] = {**PROBE_S3_CONFIG, **options.get("config_kwargs", {})}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except TypeError as e:
        raise _bad_option(e, url, role=role) from None
    except (ValueError, ImportError) as e:  # an unknown protocol, or its package is not installed
        raise UsageError(f"{role} {url}: {e}") from None
    if protocol in ("s3", "s3a") and hasattr(fs, "retries"):
        fs.retries = PROBE_S3FS_RETRIES
    return fs, path


def _info(fs: Any, path: str, *, url: str, storage_options: dict[str, Any], role: str) -> dict[str, Any] | None:
    """``fs.info(path)``; None where nothing is there; ``_UNKNOWN`` where the probe cannot tell."""
    try:
        return fs.info(path)
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file is on the way (a/file/b)
        return None
    except TypeError as e:  # s3fs passes unknown options on to botocore's session at first use
        raise _bad_option(e, url, role=role) from None
    except Exception as e:  # noqa: BLE001 - a probe: what it cannot classify is the run's to report
        if _unreachable(e):
            endpoint = _endpoint(_protocol(url), storage_options)
            raise UsageError(
                f"{role} {url}: cannot reach the storage at {endpoint} ({e}); check the endpoint_url "
                "of the storage options, and that the service is up"
            ) from None
        if type(e).__name__ == "NoCredentialsError":  # botocore's, without importing it here
            raise UsageError(
                f"{role} {url}: no credentials for {_protocol(url)}:// (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or key and secret in the storage options)"
            ) from None
        log.debug("probe of %s %s: %s", role, url, e)
        return _UNKNOWN


def _bad_option(e: TypeError, url: str, *, role: str) -> UsageError:
    named = re.search(r"unexpected keyword argument '([^']+)'", str(e))
    what = f"storage option {named.group(1)!r} is" if named else "the storage options are"
    return UsageError(f"{role} {url}: {what} not accepted by the {_protocol(url)}:// filesystem ({e})")


def _unreachable(e: BaseException) -> bool:
    """Whether ``e`` (or an error it wraps) says the endpoint could not be connected to."""
    kinds: list[type] = [ConnectionError, TimeoutError, socket.gaierror]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError  # endpoint, connect timeout, proxy

        kinds.append(BotoConnectionError)
    except ImportError:
        pass
    try:
        from aiohttp import ClientConnectionError

        kinds.append(ClientConnectionError)
    except ImportError:
        pass
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        if isinstance(err, tuple(kinds)):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _protocol(url: str) -> str:
    return fsspec.core.split_protocol(url)[0] or "file"


def _endpoint(protocol: str, storage_options: dict[str, Any]) -> str:
    client = storage_options.get("client_kwargs")
    endpoint = storage_options.get("endpoint_url") or (client.get("endpoint_url") if isinstance(client, dict) else None)
    return str(endpoint) if endpoint else f"the default {protocol} endpoint"
