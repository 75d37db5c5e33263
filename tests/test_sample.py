"""``flowzoo sample RUN_DIR``: sample, reconstruction and interpolation grids of a saved run."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from flowzoo.cli import main
from flowzoo.datasets import BinarizedMNIST


def test_sample_writes_the_three_grids(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    arguments = ["--count", "4", "--pairs", "3", "--steps", "5", "--output", str(tmp_path)]
    assert main(["sample", str(run_dir), *arguments]) == 0
    sizes = {name: Image.open(tmp_path / f"{name}.png").size for name in ("samples", "reconstructions",
                                                                            "interpolations")}
    padded = 28 + 2
    assert sizes["samples"] == (2 * padded + 2, 2 * padded + 2)  # 4 images, 2 per row
    assert sizes["reconstructions"] == (2 * (2 * 28 + 2) + 2, 2 * padded + 2)  # each image beside its reconstruction
    assert sizes["interpolations"] == (5 * padded + 2, 3 * padded + 2)  # a row per pair, a column per step


def test_sample_rejects_bad_counts_and_keeps_the_model_fixed(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    assert main(["sample", str(run_dir), "--steps", "1", "--output", str(tmp_path)]) == 2
    assert main(["sample", str(run_dir), "model.latent_size=3", "--output", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_pictures_draw_a_seeded_sample_of_a_split_sorted_by_class(tiny_run, tmp_path):
    """Static binarized MNIST's test split is sorted by digit (the first ~1,000 are zeros):
    the pictured images come from all over it, and the same seed picks the same ones."""
    run_dir, _ = tiny_run
    grids = []
    for output in (tmp_path / "a", tmp_path / "b"):
        assert main(["sample", str(run_dir), "--count", "16", "--output", str(output)]) == 0
        grids.append(np.asarray(Image.open(output / "reconstructions.png")))
    assert np.array_equal(*grids)
    test = BinarizedMNIST(download=False).load("test").flatten(1)
    found = []
    for i in range(16):  # 4 per row, each original beside its reconstruction: 2·28 + 2 pixels a cell
        top, left = 2 + (i // 4) * 30, 2 + (i % 4) * 58
        original = torch.from_numpy(grids[0][top : top + 28, left : left + 28] > 127).flatten().to(test.dtype)
        (index,) = (test == original).all(1).nonzero()[:1, 0].tolist()
        found.append(index)
    assert found != list(range(16))
    assert len({index // 1000 for index in found}) >= 4, found  # several thousands: several digits
