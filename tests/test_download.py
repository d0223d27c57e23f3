"""``--download``: the archive is fetched, checked and extracted once even when several processes start at
once (a Slurm array, ``sweep --jobs``, torchrun's ranks). Served here from a local HTTP server; no internet."""

import functools
import hashlib
import http.server
import multiprocessing as mp
import tarfile
import threading

import pytest

from conftest import write_cifar10
from kdprune.data import download, load_dataset
from kdprune.errors import UserError


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A CIFAR-10-format archive behind http://127.0.0.1:PORT/, set as the official one."""
    src = tmp_path / "src"
    write_cifar10(src)
    web = tmp_path / "web"
    web.mkdir()
    archive = web / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(web))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    url = f"http://127.0.0.1:{server.server_port}/{archive.name}"
    monkeypatch.setitem(download.ARCHIVES, "cifar10", (url, md5, "cifar-10-batches-py"))
    yield url
    server.shutdown()


def _fetch(data_dir, q):
    try:
        download.download_dataset("cifar10", data_dir)
        q.put(len(load_dataset("cifar10", data_dir).train_y))
    except Exception as e:  # noqa: BLE001 - the test reports what a process hit
        q.put(f"{type(e).__name__}: {e}")


def test_processes_starting_together_download_once_and_read_a_whole_folder(tmp_path, served):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_fetch, args=(str(tmp_path / "data"), q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert got == [100] * 4, got
    left = sorted(f.name for f in (tmp_path / "data").iterdir())
    assert left == [".cifar-10-batches-py.lock", "cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_a_wrong_checksum_is_one_line_and_extracts_nothing(tmp_path, served, monkeypatch):
    monkeypatch.setitem(download.ARCHIVES, "cifar10", (served, "0" * 32, "cifar-10-batches-py"))
    with pytest.raises(UserError, match="does not match the official 0000"):
        download.download_dataset("cifar10", str(tmp_path / "data"))
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
    assert not list((tmp_path / "data").glob(".*.extracting"))
