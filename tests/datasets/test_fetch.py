"""Data set download: cache folder, resumable checked downloads, safe extraction, installs.

Every network test talks to an HTTP server on 127.0.0.1 started here (Range and If-Range
support, optional truncation), with a socket timeout on every call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
import shutil
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from biounet.data.layouts import open_dataset
from biounet.datasets import fetch as fetch_module
from biounet.datasets.archives import UnsafeArchiveError, safe_extract
from biounet.datasets.download import ChecksumError, DownloadError, download
from biounet.datasets.fetch import cache_dir, fetch
from biounet.datasets.registry import DATASETS, DSB_SUBSET_STEP, DataSet, get_dataset

TIMEOUT = 5.0  # seconds per socket operation; bounds every network call below


# --- a local HTTP server -------------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate_once: set[str] = set()
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, dict[str, str]]] = []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: _State = self.server.state
        state.requests.append((self.path, dict(self.headers)))
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        start = 0
        if requested and self.path not in state.ignore_range and if_range in (None, etag):
            start = int(requested.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        if self.path in state.truncate_once:  # announce everything, send half, hang up
            state.truncate_once.discard(self.path)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class LocalServer:
    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self.state: _State = httpd.state
        self.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"

    def serve(self, name: str, data: bytes) -> str:
        self.state.files[f"/{name}"] = data
        return f"{self.base_url}/{name}"

    def ranges(self) -> list[str | None]:
        return [headers.get("Range") for _, headers in self.state.requests]


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                     "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield LocalServer(httpd)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=TIMEOUT)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- archives and folders --------------------------------------------------------------------


def make_zip(files: dict[str, bytes]) -> bytes:
    """The same bytes for the same files: a fixed date, where writestr(name) takes the
    clock's, so a test that rebuilds the archive to hash it cannot straddle a second."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, data)
    return buffer.getvalue()


def make_tar(files: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """tar.gz of `files` plus `links`: name -> (tarfile type, link name)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, (kind, linkname) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            bundle.addfile(info)
    return buffer.getvalue()


def read_tree(folder: Path) -> dict[str, bytes]:
    """Obvious reference: every file under `folder` by its /-joined relative path."""
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


GOOD_FILES = {"top/a.txt": b"alpha", "top/sub/b.bin": bytes(range(256)) * 40, "c.txt": b""}


# --- cache folder ----------------------------------------------------------------------------


def test_cache_dir_prefers_biounet_data_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch_module.sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BIOUNET_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "data"
    monkeypatch.delenv("BIOUNET_DATA")
    assert cache_dir() == tmp_path / "xdg" / "biounet"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "biounet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "biounet"
    assert not (tmp_path / "home").exists()


# --- download --------------------------------------------------------------------------------


def test_download_with_matching_checksum(server, tmp_path):
    data = bytes(range(256)) * 3000
    url = server.serve("file.bin", data)
    target = download(url, tmp_path / "d" / "file.bin", sha256=sha256(data), timeout=TIMEOUT)
    assert target.read_bytes() == data
    assert sorted(path.name for path in target.parent.iterdir()) == ["file.bin"]
    assert server.ranges() == [None]
    # an existing verified file is not downloaded again
    download(url, target, sha256=sha256(data).upper(), timeout=TIMEOUT)
    assert len(server.state.requests) == 1


def test_download_with_wrong_checksum_is_refused_and_removed(server, tmp_path):
    url = server.serve("file.bin", b"the real content")
    with pytest.raises(ChecksumError, match=f"expected {'0' * 64}; deleted it"):
        download(url, tmp_path / "file.bin", sha256="0" * 64, timeout=TIMEOUT)
    assert list(tmp_path.iterdir()) == []


def test_download_without_checksum_logs_digest_and_says_not_verified(server, tmp_path, caplog):
    data = b"unknown checksum"
    url = server.serve("file.bin", data)
    with caplog.at_level(logging.WARNING, logger="biounet.datasets.fetch"):
        download(url, tmp_path / "file.bin", timeout=TIMEOUT)
    assert sha256(data) in caplog.text and "not verified" in caplog.text
    assert "verified (" not in caplog.text


def test_download_rejects_malformed_checksum(tmp_path):
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits, got 'abc'"):
        download("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc")


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    url = server.serve("big.bin", data)
    server.state.truncate_once.add("/big.bin")
    target = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match=r"stopped after 150000 of 300001 bytes; run again"):
        download(url, target, sha256=sha256(data), timeout=TIMEOUT)
    part = tmp_path / "big.bin.part"
    assert part.read_bytes() == data[:150_000] and not target.exists()

    download(url, target, sha256=sha256(data), timeout=TIMEOUT)
    assert target.read_bytes() == data
    assert server.ranges() == [None, "bytes=150000-"]
    etag = f'"{sha256(data)[:16]}"'
    assert server.state.requests[1][1].get("If-Range") == etag
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.bin"]


def test_resume_restarts_from_zero_when_server_ignores_range(server, tmp_path):
    data = bytes(range(256)) * 1000
    url = server.serve("file.bin", data)
    server.state.truncate_once.add("/file.bin")
    with pytest.raises(DownloadError):
        download(url, tmp_path / "file.bin", timeout=TIMEOUT)
    server.state.ignore_range.add("/file.bin")
    download(url, tmp_path / "file.bin", sha256=sha256(data), timeout=TIMEOUT)
    assert (tmp_path / "file.bin").read_bytes() == data  # not the first half twice
    assert server.ranges()[1] == "bytes=128000-"


def test_resume_restarts_when_the_file_changed_on_the_server(server, tmp_path):
    old, new = b"o" * 10_000, b"n" * 12_000
    url = server.serve("file.bin", old)
    server.state.truncate_once.add("/file.bin")
    with pytest.raises(DownloadError):
        download(url, tmp_path / "file.bin", timeout=TIMEOUT)
    server.serve("file.bin", new)  # new ETag: If-Range fails, the server sends it all
    download(url, tmp_path / "file.bin", sha256=sha256(new), timeout=TIMEOUT)
    assert (tmp_path / "file.bin").read_bytes() == new


def test_complete_part_is_accepted_after_range_not_satisfiable(server, tmp_path):
    data = b"already all here"
    url = server.serve("file.bin", data)
    (tmp_path / "file.bin.part").write_bytes(data)
    download(url, tmp_path / "file.bin", sha256=sha256(data), timeout=TIMEOUT)
    assert (tmp_path / "file.bin").read_bytes() == data
    assert server.ranges() == [f"bytes={len(data)}-"]


def test_unreachable_host_gives_one_line_offline_error(closed_port, tmp_path):
    url = f"http://127.0.0.1:{closed_port}/file.zip"
    with pytest.raises(DownloadError) as caught:
        download(url, tmp_path / "file.zip", timeout=TIMEOUT)
    message = str(caught.value)
    assert isinstance(caught.value, ConnectionError) and "\n" not in message
    assert message.startswith(f"cannot reach 127.0.0.1:{closed_port} to download file.zip: ")
    assert message.endswith(f"download {url} by hand and save it as {tmp_path / 'file.zip'}")
    assert list(tmp_path.iterdir()) == []


def test_silent_server_times_out_with_offline_error(tmp_path):
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.zip"
        with pytest.raises(DownloadError, match="cannot reach 127.0.0.1:.* timed out"):
            download(url, tmp_path / "slow.zip", timeout=0.3)


def test_http_error_names_status(server, tmp_path):
    with pytest.raises(DownloadError, match="answered HTTP 404 .*/missing.zip"):
        download(f"{server.base_url}/missing.zip", tmp_path / "missing.zip", timeout=TIMEOUT)


def test_progress_bar_is_opt_in(server, tmp_path, capsys):
    url = server.serve("file.bin", b"x" * 5000)
    download(url, tmp_path / "quiet.bin", timeout=TIMEOUT)
    assert capsys.readouterr().err == ""
    download(url, tmp_path / "loud.bin", progress=True, timeout=TIMEOUT)
    assert "loud.bin" in capsys.readouterr().err


# --- safe extraction -------------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_safe_extract_reproduces_the_archive(make, tmp_path):
    archive = tmp_path / "archive"
    archive.write_bytes(make(GOOD_FILES))
    target = safe_extract(archive, tmp_path / "out")
    assert read_tree(target) == GOOD_FILES
    assert sorted(path.name for path in tmp_path.iterdir()) == ["archive", "out"]


def test_safe_extract_keeps_links_inside_the_target(tmp_path):
    archive = tmp_path / "links.tar.gz"
    archive.write_bytes(make_tar({"data/a.txt": b"a"}, {
        "data/alias.txt": (tarfile.SYMTYPE, "a.txt"),
        "data/hard.txt": (tarfile.LNKTYPE, "data/a.txt"),
    }))
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "data" / "alias.txt").is_symlink()
    assert (target / "data" / "alias.txt").read_bytes() == (target / "data/hard.txt").read_bytes()


MALICIOUS = {
    "zip ..": (make_zip, {"ok.txt": b"ok", "../evil": b"x"}, None, "'../evil'.*'..' component"),
    "zip absolute": (make_zip, {"/abs/evil": b"x"}, None, "'/abs/evil'.*absolute path"),
    "zip drive": (make_zip, {"C:/evil": b"x"}, None, "'C:/evil'.*absolute path"),
    "tar ..": (make_tar, {"ok.txt": b"ok", "a/../../evil": b"x"}, None,
               "'a/../../evil'.*'..' component"),
    "tar symlink out": (make_tar, {"ok.txt": b"ok"}, {"link": (tarfile.SYMTYPE, "../../evil")},
                        "'link' is a symbolic link to '../../evil', outside"),
    "tar symlink absolute": (make_tar, {}, {"etc": (tarfile.SYMTYPE, "/etc")},
                             "'etc' is a symbolic link to '/etc', an absolute path"),
    "tar hardlink out": (make_tar, {}, {"hard": (tarfile.LNKTYPE, "../evil")},
                         "'hard' is a hard link to '../evil', outside"),
    "tar below link": (make_tar, {"dir/x": b"x"},
                       {"up": (tarfile.SYMTYPE, "."), "up/evil": (tarfile.SYMTYPE, "..")},
                       "'up/evil' lies below a symbolic link"),
    "tar fifo": (make_tar, {}, {"pipe": (tarfile.FIFOTYPE, "")}, "'pipe' is not a file"),
}


@pytest.mark.parametrize("case", MALICIOUS, ids=list(MALICIOUS))
def test_safe_extract_refuses_unsafe_members_and_writes_nothing(case, tmp_path):
    make, files, links, message = MALICIOUS[case]
    sandbox = tmp_path / "a" / "b"
    sandbox.mkdir(parents=True)
    archive = sandbox / "archive"
    archive.write_bytes(make(files, links) if links else make(files))
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, sandbox / "out")
    assert [path.name for path in sandbox.iterdir()] == ["archive"]
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == [
        "a", "a/b", "a/b/archive"]


def test_safe_extract_refuses_zip_symlink(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr(info, "../../etc/passwd")
    (tmp_path / "links.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeArchiveError, match="'link' is a symbolic link"):
        safe_extract(tmp_path / "links.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_interrupted_extraction_leaves_no_target(tmp_path, monkeypatch):
    archive = tmp_path / "archive.zip"
    archive.write_bytes(make_zip(GOOD_FILES))
    calls = []

    def copy_then_fail(source, stream, length):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        shutil.copyfileobj(source, stream, length)

    monkeypatch.setattr(fetch_module.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(KeyboardInterrupt):
        safe_extract(archive, tmp_path / "out")
    assert [path.name for path in tmp_path.iterdir()] == ["archive.zip"]


def test_safe_extract_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="archive .*nothing.zip does not exist"):
        safe_extract(tmp_path / "nothing.zip", tmp_path / "out")
    (tmp_path / "page.zip").write_bytes(b"<html>503 Service Unavailable</html>")
    with pytest.raises(ValueError, match="is not a zip or tar file .*error page"):
        safe_extract(tmp_path / "page.zip", tmp_path / "out")
    (tmp_path / "real.tar.gz").write_bytes(make_tar(GOOD_FILES))
    with pytest.raises(ValueError, match=r"is not a zip file \(found: tar\)"):
        safe_extract(tmp_path / "real.tar.gz", tmp_path / "out", kind="zip")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="extraction target .*out exists"):
        safe_extract(tmp_path / "real.tar.gz", tmp_path / "out")


# --- fetch: registry entries on synthetic archives -------------------------------------------


def fetch_synthetic(server, root: Path, name: str, files: dict[str, bytes], **options) -> Path:
    server.serve(get_dataset(name).filename, make_zip(files))
    return fetch(name, directory=root, base_url=server.base_url, timeout=TIMEOUT, **options)


def test_fetch_cell_tracking_challenge_layout(server, tmp_path, rng):
    frames = rng.integers(0, 255, (2, 12, 10), dtype=np.uint8)
    truth = np.zeros((12, 10), np.uint16)
    truth[2:6, 3:8], truth[7:11, 1:4] = 1, 2
    files = {"DIC-C2DH-HeLa/01/t000.tif": tiff(frames[0]),
             "DIC-C2DH-HeLa/01/t001.tif": tiff(frames[1]),
             "DIC-C2DH-HeLa/01_GT/SEG/man_seg001.tif": tiff(truth),
             "DIC-C2DH-HeLa/01_GT/TRA/man_track001.tif": tiff(truth)}
    root = tmp_path / "root"
    folder = fetch_synthetic(server, root, "DIC-C2DH-HeLa", files)
    assert folder == root / "DIC-C2DH-HeLa"
    assert sorted(path.name for path in root.iterdir()) == ["DIC-C2DH-HeLa", "downloads"]
    assert list((root / "downloads").iterdir()) == []  # the archive is not kept
    dataset = open_dataset(folder)
    assert dataset.layout == "ctc" and dataset.names == ("01_t001",)
    np.testing.assert_array_equal(dataset[0].image, frames[1])
    np.testing.assert_array_equal(dataset[0].labels, truth)
    note = (folder / "SOURCE.txt").read_text()
    assert "not verified" in note and sha256(make_zip(files)) in note and "Ulman" in note

    n_requests = len(server.state.requests)
    assert fetch("DIC-C2DH-HeLa", directory=root, base_url=server.base_url) == folder
    assert len(server.state.requests) == n_requests  # installed: nothing downloaded


def test_fetch_isbi2012_renames_into_pairs_layout(server, tmp_path, rng):
    base = get_dataset("isbi2012").subfolder
    images = {index: rng.integers(0, 255, (8, 8), dtype=np.uint8) for index in range(12)}
    labels = {index: np.where(rng.random((8, 8)) < 0.8, 255, 0).astype(np.uint8)
              for index in range(12)}
    files = {f"{base}/train/image/{index}.png": png(images[index]) for index in images}
    files |= {f"{base}/train/label/{index}.png": png(labels[index]) for index in labels}
    files |= {f"{base}/test/{index}.png": png(images[index]) for index in range(3)}
    files |= {f"{base}/test/0_predict.png": b"model output", f"{base}/train/aug/x.png": b"aug",
              base.split("/")[0] + "/README.md": b"readme"}
    folder = fetch_synthetic(server, tmp_path, "isbi2012", files)

    tree = read_tree(folder)
    expected = {f"train/images/{index:02d}.png": files[f"{base}/train/image/{index}.png"]
                for index in images}
    expected |= {f"train/labels/{index:02d}.png": files[f"{base}/train/label/{index}.png"]
                 for index in labels}
    expected |= {f"test/images/{index:02d}.png": files[f"{base}/test/{index}.png"]
                 for index in range(3)}
    assert {name: data for name, data in tree.items() if name != "SOURCE.txt"} == expected
    dataset = open_dataset(folder / "train")
    assert dataset.layout == "pairs" and dataset.names == tuple(f"{i:02d}" for i in range(12))
    np.testing.assert_array_equal(dataset["10"].image, images[10])
    np.testing.assert_array_equal(dataset["10"].labels > 0, labels[10] == 255)


def test_fetch_dsb2018_keeps_every_fourth_id_in_reference_layout(server, tmp_path, rng):
    base = get_dataset("dsb2018").subfolder
    ids = sorted(hashlib.sha256(bytes([index])).hexdigest() for index in range(6))
    files, n_masks = {}, {}
    for position, image_id in enumerate(ids):
        image = rng.integers(0, 255, (10, 9, 4), dtype=np.uint8)
        files[f"{base}/{image_id}/images/{image_id}.png"] = png(image)
        n_masks[image_id] = position % 3 + 1
        for mask_index in range(n_masks[image_id]):
            mask = np.zeros((10, 9), np.uint8)
            mask[mask_index * 3:mask_index * 3 + 2, 1:5] = 255
            files[f"{base}/{image_id}/masks/m{mask_index}.png"] = png(mask)
    folder = fetch_synthetic(server, tmp_path, "dsb2018", files)

    kept = ids[::DSB_SUBSET_STEP]
    assert kept == [ids[0], ids[4]]
    assert (folder / "ids.txt").read_text().split() == [f"stage1_train/{i}" for i in kept]
    assert sorted(path.stem for path in (folder / "images").iterdir()) == kept
    for image_id in kept:
        assert (folder / "images" / f"{image_id}.png").read_bytes() == \
            files[f"{base}/{image_id}/images/{image_id}.png"]
        assert read_tree(folder / "labels" / image_id) == {
            f"m{index}.png": files[f"{base}/{image_id}/masks/m{index}.png"]
            for index in range(n_masks[image_id])}
    dataset = open_dataset(folder)
    assert dataset.layout == "dsb" and dataset.names == tuple(kept)
    assert [int(sample.labels.max()) for sample in dataset] == [n_masks[i] for i in kept]


def test_fetch_verified_entry_records_verification(server, tmp_path):
    archive = make_zip({"set/data.txt": b"payload"})
    entry = DataSet(name="tiny", url=server.serve("tiny.zip", archive), filename="tiny.zip",
                    sha256=sha256(archive), archive="zip", subfolder="set", prepare="move",
                    licence="CC0", citation="nobody")
    folder = fetch(entry, directory=tmp_path, keep_archive=True, timeout=TIMEOUT)
    assert (folder / "data.txt").read_bytes() == b"payload"
    assert "(verified against the registry)" in (folder / "SOURCE.txt").read_text()
    assert (tmp_path / "downloads" / "tiny.zip").read_bytes() == archive


def test_fetch_with_wrong_checksum_installs_nothing(server, tmp_path):
    entry = DataSet(name="tiny", url=server.serve("tiny.zip", make_zip({"set/a": b"a"})),
                    filename="tiny.zip", sha256="f" * 64, archive="zip", subfolder="set",
                    prepare="move", licence="CC0", citation="nobody")
    with pytest.raises(ChecksumError, match="tiny.zip.part from .* expected f{64}"):
        fetch(entry, directory=tmp_path, timeout=TIMEOUT)
    assert read_tree(tmp_path) == {} and [p.name for p in tmp_path.iterdir()] == ["downloads"]


@pytest.mark.parametrize("files, error, message", [
    ({"DIC-C2DH-HeLa/01/t000.tif": b"x", "../evil": b"x"}, UnsafeArchiveError, "'../evil'"),
    ({"HeLa/01/t000.tif": b"x"}, ValueError, "has no folder DIC-C2DH-HeLa/ .*holds: HeLa"),
])
def test_fetch_unusable_archive_is_deleted_and_nothing_installed(server, tmp_path, files, error,
                                                                 message):
    with pytest.raises(error, match=message):
        fetch_synthetic(server, tmp_path, "DIC-C2DH-HeLa", files)
    assert [path.name for path in tmp_path.iterdir()] == ["downloads"]
    assert list((tmp_path / "downloads").iterdir()) == []
    assert not (tmp_path.parent / "evil").exists()


def test_fetch_force_replaces_an_installed_folder(server, tmp_path):
    old = tmp_path / "PhC-C2DH-U373"
    (old / "stale").mkdir(parents=True)
    files = {"PhC-C2DH-U373/01/t000.tif": b"new"}
    assert fetch_synthetic(server, tmp_path, "PhC-C2DH-U373", files) == old
    assert (old / "stale").is_dir() and not server.state.requests  # not forced: untouched
    fetch_synthetic(server, tmp_path, "PhC-C2DH-U373", files, force=True)
    assert not (old / "stale").exists() and (old / "01" / "t000.tif").read_bytes() == b"new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["PhC-C2DH-U373", "downloads"]


def test_fetch_offline_names_the_data_set_and_where_to_put_the_file(closed_port, tmp_path):
    base_url = f"http://127.0.0.1:{closed_port}/mirror"
    with pytest.raises(DownloadError) as caught:
        fetch("PhC-C2DH-U373", directory=tmp_path, base_url=base_url, timeout=TIMEOUT)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach 127.0.0.1:{closed_port} to download PhC-C2DH-U373")
    assert message.endswith(f"download {base_url}/PhC-C2DH-U373.zip by hand and save it as "
                            f"{tmp_path / 'downloads' / 'PhC-C2DH-U373.zip'}")
    assert read_tree(tmp_path) == {}


def test_fetch_uses_a_file_downloaded_by_hand(closed_port, tmp_path):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "PhC-C2DH-U373.zip").write_bytes(
        make_zip({"PhC-C2DH-U373/01/t000.tif": b"by hand"}))
    folder = fetch("PhC-C2DH-U373", directory=tmp_path,
                   base_url=f"http://127.0.0.1:{closed_port}", timeout=TIMEOUT)
    assert (folder / "01" / "t000.tif").read_bytes() == b"by hand"


# --- registry --------------------------------------------------------------------------------


def test_registry_entries_are_official_and_unverified_until_hashes_are_known():
    assert tuple(DATASETS) == ("isbi2012", "dsb2018", "DIC-C2DH-HeLa", "PhC-C2DH-U373")
    for name in ("DIC-C2DH-HeLa", "PhC-C2DH-U373"):
        assert DATASETS[name].url == \
            f"http://data.celltrackingchallenge.net/training-datasets/{name}.zip"
    assert "zhixuhao/unet/zip/b45af4d458437d8281cc218a07fd4380818ece4a" in DATASETS["isbi2012"].url
    assert "30354551efef351c1241da7c6d48cf938d76f02a" in DATASETS["dsb2018"].url
    for entry in DATASETS.values():
        assert entry.sha256 is None  # none invented: fill in after a trusted download
        assert entry.citation and entry.licence and "/" not in entry.filename


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown data set 'isbi2013'; known: isbi2012, dsb2018"):
        get_dataset("isbi2013")
    entry = DATASETS["isbi2012"]
    with pytest.raises(ValueError, match="archive must be one of .*got 'rar'"):
        dataclasses.replace(entry, archive="rar")
    with pytest.raises(ValueError, match="prepare must be one of .*got 'unzip'"):
        dataclasses.replace(entry, prepare="unzip")
    with pytest.raises(ValueError, match="sha256 must be 64 lower-case hex digits"):
        dataclasses.replace(entry, sha256="ABC")
    with pytest.raises(ValueError, match="name must be a plain folder name, got '../x'"):
        dataclasses.replace(entry, name="../x")


def test_isbi_conversion_refuses_unpaired_labels(tmp_path):
    from biounet.datasets.registry import convert_isbi2012

    for folder, names in (("train/image", ["0", "1"]), ("train/label", ["0"])):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for name in names:
            (tmp_path / "in" / folder / f"{name}.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"train images \[0, 1\] and labels \[0\]"):
        convert_isbi2012(tmp_path / "in", tmp_path / "out")
