"""Shards behind a URL, read through fsspec from a real nginx started by the test on a free port."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from vaedist import remote
from vaedist.config import DataConfig
from vaedist.data import build_loader
from vaedist.errors import UserError
from vaedist.shard.format import load_manifest, table_name

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="needs nginx (apt-get install nginx-light)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Nginx:
    """nginx serving `root` on 127.0.0.1:<free port>, logging each request's Range header and status."""

    def __init__(self, root: Path, work: Path):
        self.root, self.work = root, work
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / "access.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        for _ in range(5):  # another process may take the free port between our check and nginx's bind
            self.port = free_port()
            user = "user root;" if os.geteuid() == 0 else ""  # workers must read pytest's 0700 tmp dirs
            (self.work / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
daemon off;
error_log {self.work}/error.log;
pid {self.work}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  log_format ranges '$request_method $uri $status "$http_range" $body_bytes_sent';
  access_log {self.log} ranges;
  client_body_temp_path {self.work}/body; proxy_temp_path {self.work}/proxy;
  fastcgi_temp_path {self.work}/fastcgi; uwsgi_temp_path {self.work}/uwsgi; scgi_temp_path {self.work}/scgi;
  server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}
}}
""")
            self.proc = subprocess.Popen([NGINX, "-p", str(self.work), "-c", str(self.work / "nginx.conf")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{self.url}/", timeout=1).read()
                    return
                except urllib.error.HTTPError:  # it answers (403/404 for the bare root): it is up
                    return
                except OSError:
                    if self.proc.poll() is not None:
                        break
                    time.sleep(0.05)
            self.stop()
        pytest.skip(f"nginx did not start: {(self.work / 'error.log').read_text()[-300:] if (self.work / 'error.log').exists() else ''}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[list[str]]:
        return [line.split() for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def served(food_shards, tmp_path):
    root = tmp_path / "www" / "food101"
    shutil.copytree(food_shards, root)
    server = Nginx(tmp_path / "www", tmp_path / "nginx")
    server.start()
    yield server, root
    server.stop()


def collect(loader, epoch: int = 0):
    loader.set_epoch(epoch)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_http_shards_give_the_same_batches_as_local_ones_with_range_requests(served, food_shards, backend):
    server, _ = served
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    url = f"{server.url}/food101"
    local = build_loader(DataConfig(shards=str(food_shards), backend=backend, workers=1), "train", train=True, batch_size=8)
    over_http = build_loader(DataConfig(shards=url, backend=backend, workers=1), "train", train=True, batch_size=8)
    assert len(over_http) == len(local)
    start_up = server.requests()  # the manifest and the table, each one GET; a HEAD per tar (its size); no .idx
    got = [r[1].rsplit("/", 1)[1] for r in start_up if r[0] == "GET" and r[1].startswith("/food101/")]
    assert got == ["manifest.json", table_name("train")]
    assert not [r for r in start_up if r[1].endswith(".idx") or (r[1].endswith(".tar") and r[0] != "HEAD")]
    (x_http, y_http), (x_local, y_local) = collect(over_http), collect(local)
    assert torch.equal(y_http, y_local) and torch.equal(x_http, x_local)
    tars = [r for r in server.requests() if r[1].endswith(".tar") and r[0] == "GET"]
    assert tars and all(r[2] == "206" and r[3].startswith('"bytes=') for r in tars)  # ranges, never a whole tar
    tar_bytes = sum(s.bytes for s in load_manifest(food_shards).splits["train"].shards)
    assert sum(int(r[4]) for r in tars) < 1.2 * tar_bytes  # one epoch's JPEGs, no re-download per batch


def test_a_404_table_is_one_line_naming_it(served):
    server, root = served
    (root / table_name("val")).unlink()
    with pytest.raises(UserError, match=rf"table '{server.url}/food101/{table_name('val')}' is not on the server"):
        build_loader(DataConfig(shards=f"{server.url}/food101", backend="reference"), "val", train=False, batch_size=8)


def test_a_missing_url_is_one_line_naming_it(served):
    server, _ = served
    with pytest.raises(UserError, match=rf"manifest '{server.url}/nowhere/manifest.json' is not on the server"):
        build_loader(DataConfig(shards=f"{server.url}/nowhere"), "train", train=True, batch_size=8)


def test_a_404_shard_is_one_line_naming_it(served):
    server, root = served
    victim = load_manifest(root).splits["val"].shards[0].name
    (root / victim).unlink()
    with pytest.raises(UserError, match=rf"shard '{server.url}/food101/{victim}' is not on the server \(HTTP 404"):
        build_loader(DataConfig(shards=f"{server.url}/food101", backend="reference"), "val", train=False, batch_size=8)


def test_a_connection_dropped_mid_epoch_is_retried_then_one_line_naming_the_shard(served, monkeypatch):
    server, root = served
    monkeypatch.setattr(remote, "RETRY_PAUSE_S", 0.05)
    loader = build_loader(DataConfig(shards=f"{server.url}/food101", backend="reference", workers=0), "train",
                          train=True, batch_size=8)
    loader.set_epoch(0)
    batches = iter(loader)
    next(batches)
    server.stop()  # the server goes away mid-epoch
    shard = load_manifest(root).splits["train"].shards[0].name
    with pytest.raises(UserError, match=rf"shard '{server.url}/food101/{shard}' could not be read after "
                                        rf"{remote.RETRIES + 1} attempts"):
        next(batches)
