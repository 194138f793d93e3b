"""Storage faults between the workers and S3: a fault-injecting HTTP proxy in front of moto's
server. Flaky storage (~10% of requests answered 503 SlowDown or reset) loses and duplicates
nothing; storage down for one shard fails that shard only, and a rerun completes it."""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import QUICK_ARGS
from ray_fixtures import QUICK_RUN, assert_exactly_once, assert_same_tables, tables
from typer.testing import CliRunner

import mrcnn_batch as mb

pytestmark = pytest.mark.slow  # end to end on Ray: `make test-fast` leaves it out

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


class FaultyProxy:
    """A reverse proxy to ``upstream`` that fails some requests.

    ``flaky``: the share of requests answered ``503 SlowDown`` or with a reset connection
    (before the request reaches S3, or after: the write happened but the client never hears):
    every ``1/flaky``-th request, the three faults in turn, so that a run always meets them
    (a random draw met fewer than 3 in about one run of a hundred).
    ``down``: a regex; requests whose path matches are always answered ``503``."""

    def __init__(self, upstream: str, *, flaky: float = 0.0, down: str | None = None):
        self.upstream = upstream.removeprefix("http://")
        self.every = round(1 / flaky) if flaky else 0
        self.down = down
        self.lock = threading.Lock()
        self.faults = 0
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

            def _error(self, code: int, s3code: str) -> None:
                body = f"<Error><Code>{s3code}</Code><Message>injected</Message></Error>".encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.pick(self.path)
                if fault == "down":
                    return self._error(503, "ServiceUnavailable")
                if fault == "slowdown":
                    return self._error(503, "SlowDown")
                if fault == "reset_before":
                    return self._reset()
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "reset_after":
                    return self._reset()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def pick(self, path: str) -> str | None:
        with self.lock:
            self.requests += 1
            if self.down and re.search(self.down, path):
                self.faults += 1
                return "down"
            if self.every and self.requests % self.every == 0:
                self.faults += 1
                return ("slowdown", "reset_before", "reset_after")[self.faults % 3]
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bucket_with_images(s3, image_dir):
    fs, bucket, options = s3
    for p in sorted(Path(image_dir).glob("*.jpg")):
        fs.put(str(p), f"{bucket}/images/{p.name}")
    return fs, bucket, options


def by_name(url: str, options: dict) -> dict:
    """The tables with each image id replaced by its file name (ids derive from the URI)."""
    run = mb.open_run(url, storage_options=options)
    names = {r["image_id"]: r["uri"].rsplit("/", 1)[1] for r in run.read_plan().to_pylist()}
    return {k: [_rename(row, names) for row in v] for k, v in tables(url, options).items()}


def _rename(row: tuple, names: dict) -> tuple:
    return tuple(sorted((k, names[v] if k == "image_id" else None if k == "uri" else v) for k, v in row))


def test_flaky_storage_loses_and_duplicates_nothing(ray_session, quick_clean_run, bucket_with_images):
    fs, bucket, options = bucket_with_images
    proxy = FaultyProxy(options["endpoint_url"], flaky=0.1)
    try:
        flaky = dict(options, endpoint_url=proxy.url)
        out = f"s3://{bucket}/runs/flaky"
        summary = mb.infer(f"s3://{bucket}/images/", out, weights=_weights(quick_clean_run), storage_options=flaky, **QUICK_RUN,
                           executor="ray", workers=2, cpus_per_worker=0.5)
        assert proxy.faults >= 3, (proxy.faults, proxy.requests)  # the faults really happened
    finally:
        proxy.close()
    assert summary.complete and not summary.failed_shards
    assert summary.images_by_status == {"ok": 5}
    assert_exactly_once(out, options)
    assert_same_tables(by_name(out, options), by_name(str(quick_clean_run), {}))


def _weights(run_dir) -> str:
    return mb.open_run(str(run_dir)).run_meta().weights["source"]


def test_storage_down_for_a_shard_fails_it_then_a_rerun_completes_it(ray_session, quick_clean_run, bucket_with_images):
    from mrcnn_batch.cli import EXIT_SHARDS_FAILED, app

    fs, bucket, options = bucket_with_images
    proxy = FaultyProxy(options["endpoint_url"], down=r"/shard-000001\.")
    try:
        # One client-side retry and two tries per shard, so that a shard fails fast.
        storage = dict(options, endpoint_url=proxy.url, config_kwargs={"retries": {"max_attempts": 1}})
        out = f"s3://{bucket}/runs/down"
        args = ["infer", f"s3://{bucket}/images/", out, "--weights", _weights(quick_clean_run), "--storage-options", json.dumps(storage),
                *QUICK_ARGS, "--shard-size", "2",
                "--workers", "1", "--cpus-per-worker", "0.5", "--max-attempts", "2", "--no-progress"]
        first = CliRunner().invoke(app, args)
        assert first.exit_code == EXIT_SHARDS_FAILED, first.output
        assert "shard 1 failed" in first.output and "1 shard(s) failed" in first.output
        assert " ".join(first.output.split()).count("shard 1 will run again:") == 1  # 2 attempts, the retry shown
        assert "(after 2 attempts)" in " ".join(first.output.split())
        status = CliRunner().invoke(app, ["status", out, "--storage-options", json.dumps(options), "--json"])
        st = json.loads(status.stdout)
        assert st["shards_done"] == [0, 2] and list(st["shards_failed"]) == ["1"] and not st["complete"]

        proxy.down = None  # the storage is back
        second = CliRunner().invoke(app, args)
        assert second.exit_code == 0, second.output
        assert "(1 run now, resumed)" in " ".join(second.output.split())
    finally:
        proxy.close()
    assert_exactly_once(out, options)
    assert_same_tables(by_name(out, options), by_name(str(quick_clean_run), {}))
