"""Static binarized MNIST: canonical files, the packaged copy, checksums, downloads."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from flowzoo import datasets
from flowzoo.datasets import BINARIZED_MNIST_SHA256, BinarizedMNIST, amat_bytes, data_root
from flowzoo.errors import DataError


@pytest.fixture(scope="module")
def test_split_bits() -> np.ndarray:
    """The test split's bits from the packaged copy (verified against the published SHA-256 on load)."""
    return BinarizedMNIST(root="/nonexistent", download=False).load("test").flatten(1).numpy()


@pytest.fixture
def no_packaged_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "PACKAGED_DIR", tmp_path / "empty")


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_packaged_copy_equals_the_canonical_files(shared_data_root, split):
    canonical = BinarizedMNIST(root=str(shared_data_root)).load(split)
    packaged = BinarizedMNIST(root="/nonexistent", download=False).load(split)
    assert canonical.shape == (dict(train=50_000, valid=10_000, test=10_000)[split], 1, 28, 28)
    assert canonical.dtype == torch.uint8 and set(canonical.unique().tolist()) == {0, 1}
    assert torch.equal(canonical, packaged)


def test_reads_canonical_text_from_the_data_root(tmp_path, test_split_bits, no_packaged_copy):
    (tmp_path / "binarized_mnist").mkdir()
    (tmp_path / "binarized_mnist" / "binarized_mnist_test.amat").write_bytes(amat_bytes(test_split_bits))
    images = BinarizedMNIST(root=str(tmp_path), download=False).load("test")
    assert np.array_equal(images.flatten(1).numpy(), test_split_bits)


def test_corrupted_file_is_rejected_with_its_path(tmp_path, test_split_bits):
    raw = bytearray(amat_bytes(test_split_bits))
    raw[1000] = ord("1") if raw[1000] == ord("0") else ord("0")  # flip one pixel
    (tmp_path / "binarized_mnist").mkdir()
    path = tmp_path / "binarized_mnist" / "binarized_mnist_test.amat"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as error:
        BinarizedMNIST(root=str(tmp_path)).load("test")
    message = str(error.value)
    assert str(path) in message and BINARIZED_MNIST_SHA256["test"] in message and "corrupt" in message


def test_missing_data_with_downloads_off_says_where_it_looked(tmp_path, no_packaged_copy):
    with pytest.raises(DataError) as error:
        BinarizedMNIST(root=str(tmp_path), download=False).load("valid")
    message = str(error.value)
    assert str(tmp_path / "binarized_mnist" / "binarized_mnist_valid.amat") in message
    assert "data.download=false" in message and "FLOWZOO_DATA_ROOT" in message


@pytest.fixture
def local_server(tmp_path, test_split_bits, monkeypatch):
    """Serve a canonical test file over HTTP on localhost, in place of the original host."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "binarized_mnist_test.amat").write_bytes(amat_bytes(test_split_bits))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/binarized_mnist_{{split}}.amat"
    monkeypatch.setattr(datasets, "BINARIZED_MNIST_URL", url)
    yield served
    server.shutdown()


def test_downloads_and_verifies_into_the_data_root(tmp_path, local_server, no_packaged_copy, test_split_bits):
    root = tmp_path / "root"
    images = BinarizedMNIST(root=str(root)).load("test")
    assert np.array_equal(images.flatten(1).numpy(), test_split_bits)
    assert (root / "binarized_mnist" / "binarized_mnist_test.amat").is_file()
    assert not list(root.rglob("*.part"))


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, local_server, no_packaged_copy):
    (local_server / "binarized_mnist_test.amat").write_bytes(b"0 " * 783 + b"0\n")
    root = tmp_path / "root"
    with pytest.raises(DataError, match="SHA-256"):
        BinarizedMNIST(root=str(root)).load("test")
    assert not list(root.rglob("*.amat*"))


def test_offline_gives_a_clear_error(tmp_path, monkeypatch, no_packaged_copy):
    monkeypatch.setattr(datasets, "BINARIZED_MNIST_URL", "http://127.0.0.1:9/binarized_mnist_{split}.amat")
    with pytest.raises(DataError) as error:
        BinarizedMNIST(root=str(tmp_path)).load("test")
    message = str(error.value)
    assert "could not download http://127.0.0.1:9/" in message and "Put the canonical .amat files" in message


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWZOO_DATA_ROOT", str(tmp_path / "env"))
    assert data_root("explicit") == Path("explicit")
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv("FLOWZOO_DATA_ROOT")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root(None) == tmp_path / "cache" / "flowzoo" / "data"
