"""Shard directories behind a URL (`data.shards: https://host/shards/coco`, `s3://bucket/coco`, `gs://...`).

Everything goes through fsspec (`fsspec.core.url_to_fs`): the manifest and the .idx files are read whole,
the tars' sizes come from the server (HTTP: HEAD / Content-Length), and a member is one range request at its
.idx offset (HTTP `Range: bytes=a-b`), never the whole tar. A batch's members are fetched together
(`cat_ranges`: concurrent on HTTP). Only http(s) is tested here (against a real nginx); s3:// and gs:// go
through the same calls once their fsspec backend (s3fs, gcsfs) is installed.

A request that fails is retried RETRIES times with a growing pause; a missing file (HTTP 404) is not
retried. Either way the error is one line naming the shard's URL.
"""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from vaedist.errors import UserError

RETRIES = 3  # attempts after the first, for errors that may pass (a dropped connection, a 5xx)
RETRY_PAUSE_S = 0.5  # doubled after each failed attempt
CONCURRENT_REQUESTS = 16  # range requests in flight per process (nginx's default allows 512 connections)
T = TypeVar("T")


def is_url(location: Any) -> bool:
    """True for 'scheme://...' other than file://; local paths (str or Path) are False."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _filesystem(url: str):
    import fsspec  # only for URL shard directories: local training never imports it

    try:
        fs, _ = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise UserError(f"data.shards '{url}': fsspec cannot open this URL ({err}); for s3:// install s3fs, "
                        "for gs:// gcsfs") from None
    return fs


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def with_retries(what: str, action: Callable[[], T], retries: int | None = None) -> T:
    """Run `action`, retrying transient failures; `what` names the file in the one-line error."""
    retries = RETRIES if retries is None else retries
    pause = RETRY_PAUSE_S
    for attempt in range(retries + 1):
        try:
            return action()
        except FileNotFoundError:
            raise UserError(f"{what} is not on the server (HTTP 404 / no such object): check data.shards, "
                            "or upload the shard directory again") from None
        except Exception as err:  # aiohttp, OSError, botocore...: whatever the backend raises for a failed request
            if attempt == retries:
                raise UserError(f"{what} could not be read after {retries + 1} attempts ({_one_line(err)}); "
                                "check the server and the network, then run the same command again") from None
            time.sleep(pause)
            pause *= 2
    raise AssertionError("unreachable")


def read_bytes(url: str, what: str | None = None) -> bytes:
    fs = _filesystem(url)
    return with_retries(what or f"'{url}'", lambda: fs.cat_file(url))


def read_text(url: str, what: str | None = None) -> str:
    return read_bytes(url, what).decode()


def size(url: str, what: str | None = None) -> int:
    fs = _filesystem(url)
    return int(with_retries(what or f"'{url}'", lambda: fs.size(url)))


class RemoteTars:
    """Reads members by offset from tars behind URLs: the remote counterpart of `vaedist.data.index.TarReader`.

    Picklable (DataLoader workers): the filesystem is opened again in each process.
    """

    def __init__(self, urls: list[str]):
        self.urls = urls
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            self._fs = _filesystem(self.urls[0]) if self.urls else None
        return self._fs

    def view(self, shard: int, offset: int, size: int) -> bytes:
        return self.read_many([(shard, offset, size)])[0]

    def read_many(self, requests: list[tuple[int, int, int]]) -> list[bytes]:
        """[(shard, offset, size)] -> their bytes, fetched together; a failure names the first shard involved."""
        if not requests:
            return []
        paths = [self.urls[int(s)] for s, _, _ in requests]
        starts = [int(o) for _, o, _ in requests]
        ends = [int(o) + int(n) for _, o, n in requests]
        data = with_retries(f"shard '{paths[0]}'" if len(set(paths)) == 1 else
                            f"shards '{paths[0]}' (and {len(set(paths)) - 1} more)",
                            lambda: self._cat_ranges(paths, starts, ends))
        for path, start, end, chunk in zip(paths, starts, ends, data):
            if isinstance(chunk, BaseException):
                raise UserError(f"shard '{path}' could not be read at bytes {start}-{end} ({_one_line(chunk)})")
            if len(chunk) != end - start:
                raise UserError(f"shard '{path}' returned {len(chunk)} bytes for bytes {start}-{end - 1}: "
                                "the file on the server is shorter than its index; upload the shard directory again")
        return data

    def _cat_ranges(self, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
        if getattr(self.fs, "async_impl", False):  # http, s3, gcs: concurrent, a bounded number at once
            return self.fs.cat_ranges(paths, starts, ends, on_error="raise", batch_size=CONCURRENT_REQUESTS)
        return self.fs.cat_ranges(paths, starts, ends, on_error="raise")

    def __getstate__(self):
        return {"urls": self.urls, "_fs": None}
