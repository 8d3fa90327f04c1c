"""`biounet data fetch` in-process: offline errors are one line with exit code 2."""

import socket

import pytest

from biounet.cli import main


def closed_port():
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def test_offline_fetch_is_one_line(tmp_path, capsys):
    code = main(["data", "fetch", "DIC-C2DH-HeLa", "--dir", str(tmp_path), "--base-url", f"http://127.0.0.1:{closed_port()}", "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error[-1].startswith("biounet data: error: cannot reach 127.0.0.1")
    assert not (tmp_path / "DIC-C2DH-HeLa").exists()


def test_unknown_dataset_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "fetch", "imagenet"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
