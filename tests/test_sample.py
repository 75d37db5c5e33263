"""``flowzoo sample RUN_DIR``: sample, reconstruction and interpolation grids of a saved run."""

from __future__ import annotations

from PIL import Image

from flowzoo.cli import main


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
