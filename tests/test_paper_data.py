"""The Sylvester-flow paper's other data sets: Frey Faces (the real file), Omniglot and Caltech 101
Silhouettes (small synthetic files in their format: no copy of either is available here)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowzoo import datasets
from flowzoo.datasets import Caltech101Silhouettes, FreyFaces, Omniglot, git_blob_sha1, parse_freyfaces
from flowzoo.errors import ConfigError, DataError
from flowzoo.registry import datasets as dataset_registry

scipy_io = pytest.importorskip("scipy.io", reason="the .mat readers need scipy: pip install -e '.[dev]'")


def test_registered():
    assert isinstance(dataset_registry.build({"name": "freyfaces", "split_seed": 321}, "data"), FreyFaces)
    assert isinstance(dataset_registry.build({"name": "omniglot"}, "data"), Omniglot)
    assert isinstance(dataset_registry.build({"name": "caltech101_silhouettes"}, "data"), Caltech101Silhouettes)
    with pytest.raises(ConfigError, match=r"data.split_seed: expected an integer ≥ 0, got -1"):
        dataset_registry.build({"name": "freyfaces", "split_seed": -1}, "data")


# -- Frey Faces ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frey_file(shared_data_root) -> Path:
    path = shared_data_root / "freyfaces" / "freyfaces.pkl"
    if not path.is_file():
        pytest.skip(f"the Frey Faces file is not at {path}")
    return path


@pytest.fixture(scope="module")
def frey_rows(frey_file) -> np.ndarray:
    with open(frey_file, "rb") as file:
        return pickle.load(file, encoding="latin1")[0]  # trusted file: the reference reader


@pytest.mark.parametrize("seed", [123, 321, 231])
def test_frey_splits_are_the_authors(frey_file, frey_rows, seed):
    """1,565 / 200 / 200 in the order of the authors' np.random.seed(seed); np.random.shuffle(data / 255.)."""
    splits = {name: FreyFaces(root=str(frey_file.parents[1]), split_seed=seed).load(name) for name in FreyFaces.splits}
    assert {name: tuple(images.shape) for name, images in splits.items()} == {
        "train": (1565, 1, 28, 20), "valid": (200, 1, 28, 20), "test": (200, 1, 28, 20)}
    scaled = frey_rows / 255.0
    np.random.seed(seed)
    np.random.shuffle(scaled)
    authors = torch.from_numpy(np.rint(scaled * 255).astype(np.uint8)).view(-1, 1, 28, 20)
    assert torch.equal(torch.cat([splits["train"], splits["valid"], splits["test"]]), authors)


def test_frey_seeds_give_different_test_sets(frey_file):
    root = str(frey_file.parents[1])
    tests = [FreyFaces(root=root, split_seed=seed).load("test") for seed in (123, 321, 231)]
    assert not torch.equal(tests[0], tests[1]) and not torch.equal(tests[1], tests[2])


def test_a_frey_file_with_another_checksum_is_refused(tmp_path, frey_file):
    raw = bytearray(frey_file.read_bytes())
    raw[-100] ^= 1  # one pixel of one face
    path = tmp_path / "freyfaces" / "freyfaces.pkl"
    path.parent.mkdir()
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as error:
        FreyFaces(root=str(tmp_path)).load("train")
    message = str(error.value)
    assert f"{path} is not the Frey Faces file" in message and datasets.FREYFACES_SHA256 in message
    assert "SHA-256" in message


def test_missing_frey_faces_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as error:
        FreyFaces(root=str(tmp_path)).load("test")
    message = str(error.value)
    assert str(tmp_path / "freyfaces" / "freyfaces.pkl") in message and str(tmp_path / "freyfaces.pkl") in message
    assert "FLOWZOO_DATA_ROOT" in message


def test_the_frey_pickle_is_read_without_calling_anything(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with pytest.raises(DataError, match="system"):
        parse_freyfaces(pickle.dumps([Exploit()], protocol=0), "evil")
    assert not marker.exists()
    with pytest.raises(DataError, match=r"uint8 array of shape \(n, 560\)"):
        parse_freyfaces(pickle.dumps([np.zeros((2, 784), np.uint8)], protocol=0), "mnist-sized")


# -- Omniglot (synthetic chardata.mat) ----------------------------------------------------------


def columns(images: np.ndarray) -> np.ndarray:
    """``(n, 28, 28)`` images as the columns of a ``(784, n)`` matrix, each flattened column by column (MATLAB)."""
    return np.stack([image.flatten(order="F") for image in images], axis=1)


def letter_l(n: int) -> np.ndarray:
    """``n`` binary images of an L (a vertical bar on the left, a foot at the bottom): not symmetric."""
    images = np.zeros((n, 28, 28))
    images[:, 4:24, 6] = 1
    images[:, 23, 6:18] = 1
    return images


def write_omniglot(root: Path, train: np.ndarray, test: np.ndarray, monkeypatch, **extra) -> Path:
    path = root / "omniglot" / "chardata.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(path, {"data": columns(train), "testdata": columns(test), **extra})
    # The checksum is the git blob SHA-1 of the file; git itself says what it is for this synthetic one.
    blob = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setattr(datasets, "OMNIGLOT_GIT_SHA1", blob)
    return path


@pytest.fixture
def grey() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (30, 28, 28)) / 255.0


def test_omniglot_images_are_read_column_by_column(tmp_path, grey, monkeypatch):
    write_omniglot(tmp_path, grey, letter_l(3), monkeypatch)
    test = Omniglot(root=str(tmp_path), valid_size=5).load("test")
    assert test.shape == (3, 1, 28, 28) and test.dtype == torch.uint8
    assert torch.equal(test[:, 0], torch.from_numpy(letter_l(3)).to(torch.uint8))  # binary pixels stay as they are


def test_omniglot_splits_and_binarization_are_the_authors(tmp_path, grey, monkeypatch):
    """IWAE's split (the last valid_size after RandomState(split_seed).permutation); valid then test
    binarized by one RandomState(777) stream of binomial draws, as the Sylvester-flow authors do."""
    test_grey = np.random.default_rng(1).integers(0, 256, (4, 28, 28)) / 255.0
    write_omniglot(tmp_path, grey, test_grey, monkeypatch)
    data = Omniglot(root=str(tmp_path), valid_size=5, split_seed=4)
    shuffled = grey.astype(np.float32)[np.random.RandomState(4).permutation(30)]
    draw = np.random.RandomState(777)
    valid_bits = draw.binomial(1, shuffled[-5:])
    test_bits = draw.binomial(1, test_grey.astype(np.float32))
    assert torch.equal(data.load("train")[:, 0], torch.from_numpy(np.rint(shuffled[:-5] * 255).astype(np.uint8)))
    assert torch.equal(data.load("valid")[:, 0], torch.from_numpy(valid_bits.astype(np.uint8)))
    assert torch.equal(data.load("test")[:, 0], torch.from_numpy(test_bits.astype(np.uint8)))


def test_omniglot_training_batches_are_binarized_afresh(tmp_path, grey, monkeypatch):
    write_omniglot(tmp_path, grey, grey[:2], monkeypatch)
    train = Omniglot(root=str(tmp_path), valid_size=5).load("train")
    torch.manual_seed(0)
    first, second = Omniglot.train_transform(train), Omniglot.train_transform(train)
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    assert abs(first.mean().item() - train.float().mean().item() / 255) < 0.01


def test_an_omniglot_file_with_another_checksum_is_refused(tmp_path, grey, monkeypatch):
    path = write_omniglot(tmp_path, grey, grey[:2], monkeypatch)
    monkeypatch.setattr(datasets, "OMNIGLOT_GIT_SHA1", "0" * 40)
    with pytest.raises(DataError, match=f"{path} is not the chardata.mat of the IWAE repository: its git blob SHA-1"):
        Omniglot(root=str(tmp_path)).load("test")


def test_git_blob_sha1_is_what_git_names_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(bytes(range(256)) * 3)
    blob = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert git_blob_sha1(path.read_bytes()) == blob


@pytest.mark.parametrize("extra, drop, complaint", [
    ({}, "testdata", "it has no testdata (found: data)"),
    ({"data": 255 * np.ones((784, 30))}, None, "data should be a 2-D array of values in [0, 1]"),
], ids=["missing-key", "not-in-unit-interval"])
def test_a_bad_omniglot_file_is_a_data_error_naming_it(tmp_path, grey, monkeypatch, extra, drop, complaint):
    path = tmp_path / "chardata.mat"
    content = {"data": columns(grey), "testdata": columns(grey[:2]), **extra}
    content.pop(drop, None)
    scipy_io.savemat(path, content)
    monkeypatch.setattr(datasets, "OMNIGLOT_GIT_SHA1", git_blob_sha1(path.read_bytes()))
    with pytest.raises(DataError) as error:
        Omniglot(root=str(tmp_path), valid_size=5).load("train")
    assert str(path) in str(error.value) and complaint in str(error.value)


def test_valid_size_must_leave_omniglot_training_images(tmp_path, grey, monkeypatch):
    write_omniglot(tmp_path, grey, grey[:2], monkeypatch)
    with pytest.raises(DataError, match="valid_size=30 leaves no Omniglot training images"):
        Omniglot(root=str(tmp_path), valid_size=30).load("valid")


def test_without_scipy_the_mat_readers_say_how_to_install_it(tmp_path, grey, monkeypatch):
    write_omniglot(tmp_path, grey, grey[:2], monkeypatch)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io now raises ImportError
    with pytest.raises(DataError, match=r"needs scipy, an optional dependency of flowzoo: pip install 'flowzoo\[mat\]"):
        Omniglot(root=str(tmp_path), valid_size=5).load("test")


def test_missing_omniglot_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as error:
        Omniglot(root=str(tmp_path)).load("train")
    assert str(tmp_path / "omniglot" / "chardata.mat") in str(error.value)
    assert str(tmp_path / "chardata.mat") in str(error.value)


# -- Caltech 101 Silhouettes (synthetic caltech101_silhouettes_28_split1.mat) ------------------------


def write_caltech(root: Path, **splits: np.ndarray) -> Path:
    path = root / "caltech101_silhouettes" / "caltech101_silhouettes_28_split1.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {key: columns(images).T for key, images in splits.items()}
    labels = {key.replace("data", "labels"): np.arange(len(images))[:, None] for key, images in splits.items()}
    scipy_io.savemat(path, {**rows, **labels})
    return path


def test_caltech_silhouettes_are_inverted_and_read_column_by_column(tmp_path):
    shapes = letter_l(6)
    write_caltech(tmp_path, train_data=1 - shapes[:3], val_data=1 - shapes[:2], test_data=1 - shapes[:1])
    data = Caltech101Silhouettes(root=str(tmp_path))
    loaded = {name: data.load(name) for name in data.splits}
    assert {name: len(images) for name, images in loaded.items()} == {"train": 3, "valid": 2, "test": 1}
    for images in loaded.values():
        assert torch.equal(images[:, 0], torch.from_numpy(shapes[: len(images)]).to(torch.uint8))


def test_caltech_values_other_than_0_and_1_are_refused(tmp_path):
    path = write_caltech(tmp_path, train_data=letter_l(2) / 2, val_data=letter_l(1), test_data=letter_l(1))
    with pytest.raises(DataError, match=f"{path} is not the Caltech 101 Silhouettes .* values other than 0 and 1"):
        Caltech101Silhouettes(root=str(tmp_path)).load("train")


def test_missing_caltech_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as error:
        Caltech101Silhouettes(root=str(tmp_path)).load("valid")
    message = str(error.value)
    assert str(tmp_path / "caltech101_silhouettes" / "caltech101_silhouettes_28_split1.mat") in message
    assert "FLOWZOO_DATA_ROOT" in message
