"""From a config to a trained, evaluated run — and back from a run directory."""

from __future__ import annotations

__all__ = ["Run", "RunInterrupted", "train", "resume", "evaluate_run", "load_run", "sample_run", "RESUMABLE_KEYS"]

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from flowzoo.checkpoint import evaluation_weights, load_checkpoint
from flowzoo.config import EvalConfig, ExperimentConfig, load_config
from flowzoo.console import config_panel, console, parameter_table, results_table
from flowzoo.distributed import Distributed, resolve_device, setup_distributed
from flowzoo.errors import CheckpointError, ConfigError, Problem
from flowzoo.evaluation import evaluate, evaluation_settings
from flowzoo.images import image_grid, sample_images, save_png
from flowzoo.legacy import saved_config
from flowzoo.registry import datasets, models
from flowzoo.runs import RunDir, flat_config
from flowzoo.trainer import Trainer
from flowzoo.vae import VariationalModel

RESUMABLE_KEYS = (
    "trainer.epochs",
    "trainer.device",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.picture_count",
    "trainer.tensorboard",
    "trainer.max_bad_steps",
    "trainer.max_rollbacks",
    "eval.",
)
"""Keys a resumed run may change: how long it trains, where, and how it reports."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C while a run trained or was evaluated: ``run`` is its directory, which ``flowzoo
    resume`` continues from its last checkpoint."""

    def __init__(self, run: RunDir):
        super().__init__(str(run.path))
        self.run = run


@dataclasses.dataclass
class Run:
    """A finished run: its directory, its model (best validation weights) and its final metrics."""

    dir: RunDir
    model: VariationalModel
    metrics: dict[str, float]


def train(config: str | Path | Mapping[str, Any] | ExperimentConfig, overrides: Iterable[str] = (),
          resume: bool = False, run_dir: str | Path | None = None) -> Run:
    """Validate a config, train its model, and evaluate the best checkpoint.

    Nothing is written until the config, the model and the data have all been checked.
    Under ``torchrun`` every process calls this; they train one model together.

    Args:
        config: a YAML file, a mapping, or a config from :func:`~flowzoo.config.load_config`
            (used as it is, without resolving it again, unless there are overrides).
        overrides: ``key=value`` strings applied on top.
        resume: continue the newest run of this config's name in its output directory
            instead of starting a new one; the configs must agree except for
            :data:`RESUMABLE_KEYS`.
        run_dir: train in this directory instead of a new ``<output_dir>/<name>-<timestamp>``
            (a sweep's point); it must not hold a run yet.
    """
    config = load_config(config, overrides)
    if resume:
        run = _latest_run(config)
        return _fit(config, run, load_checkpoint(run.last))
    return _fit(config, RunDir.fresh(run_dir) if run_dir is not None else None, None)


def resume(run_dir: str | Path, overrides: Iterable[str] = ()) -> Run:
    """Continue a run from its last checkpoint (``flowzoo resume RUN_DIR``).

    On the CPU the resumed run computes exactly what the uninterrupted run would have:
    the checkpoint holds the weights, optimizer, schedule, scaler, data position and
    random states. ``overrides`` may change only :data:`RESUMABLE_KEYS`, e.g. ``trainer.epochs``.
    """
    run = RunDir.open(run_dir)
    overrides = list(overrides)
    fixed = [item for item in overrides if not _resumable(item.partition("=")[0])]
    if fixed:
        raise ConfigError([Problem(item.partition("=")[0], "a resumed run can change only "
                                   f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUMABLE_KEYS)}")
                           for item in fixed])
    config = load_config(saved_config(run.config_file), overrides)
    return _fit(config, run, load_checkpoint(run.last))


def _resumable(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in RESUMABLE_KEYS)


def _latest_run(config: ExperimentConfig) -> RunDir:
    runs = sorted(Path(config.output_dir).glob(f"{config.name}-*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise CheckpointError(f"--resume: no run of '{config.name}' with a checkpoint in {config.output_dir}/; "
                              "start one without --resume")
    run = RunDir.open(runs[-1].parent)
    saved = flat_config(load_config(saved_config(run.config_file)))
    now = flat_config(config)
    changed = [Problem(key, f"is {now.get(key)!r} here but {saved.get(key)!r} in {run.config_file}")
               for key in sorted(set(saved) | set(now))
               if saved.get(key) != now.get(key) and not _resumable(key) and key != "output_dir"]  # runs may move
    if changed:
        raise ConfigError(changed + [Problem("", f"--resume continues {run.path} only with the same config; "
                                             "drop --resume to start a new run")])
    return run


def _fit(config: ExperimentConfig, run: RunDir | None, state: dict[str, Any] | None) -> Run:
    workers = setup_distributed(cuda=resolve_device(config.trainer.device).type == "cuda")
    try:
        finished = _fit_as(workers, config, run, state)
        workers.barrier()  # no rank leaves while another still reduces metrics
        return finished
    finally:
        workers.close()


def _fit_as(workers: Distributed, config: ExperimentConfig, run: RunDir | None,
            state: dict[str, Any] | None) -> Run:
    console.quiet = not workers.is_main
    plain = dataclasses.asdict(config)  # what config.yaml and the checkpoints record
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    dataset, model = _build(config)
    splits = {split: dataset.load(split) for split in ("train", "valid", "test")}
    torch.manual_seed(config.seed + workers.rank)  # each rank its own sampling noise
    if run is None:
        path = RunDir.create(config.output_dir, config.name, plain).path if workers.is_main else None
        run = RunDir(workers.broadcast(path))
    if workers.is_main:  # config.yaml again: a resumed run may have been given more epochs
        run.begin(plain, resolve_device(config.trainer.device, workers))  # lock, provenance.json, W&B
    try:
        return _train_and_test(workers, config, plain, run, state, dataset, model, splits)
    except KeyboardInterrupt:
        raise RunInterrupted(run) from None


def _train_and_test(workers: Distributed, config: ExperimentConfig, plain: dict[str, Any], run: RunDir,
                    state: dict[str, Any] | None, dataset: Any, model: VariationalModel,
                    splits: dict[str, torch.Tensor]) -> Run:
    console.print(config_panel(plain, title=f"{config.name} → {run.path}"))
    console.print(parameter_table(model))
    trainer = Trainer(model, splits, config.trainer, run, evaluation=config.eval, seed=config.seed, config=plain,
                      workers=workers, train_transform=getattr(dataset, "train_transform", None))
    if state is not None:
        trainer.load_state_dict(state)
        console.print(f"resuming {run.path} at step {trainer.step:,} (epoch {trainer.epoch + 1}, "
                      f"batch {trainer.batch_in_epoch:,})")
    trainer.fit()
    workers.barrier()  # best.pt is complete before any rank reads it
    best = load_checkpoint(run.best, map_location=trainer.device)
    model.load_state_dict(evaluation_weights(best))
    metrics = _evaluate(model, splits[config.eval.split], config.eval, workers)
    if workers.is_main:
        kind = "test" if config.eval.split == "test" else "eval"
        run.log(kind, step=best["step"], epoch=best["epoch"], split=config.eval.split, **metrics)
        run.finish(kind, metrics, best["step"])  # end time; TensorBoard hparams; W&B summary
    averaged = ", Polyak-averaged" if "ema" in best else ""
    caption = (f"{len(splits[config.eval.split]):,} images; "
               f"weights of the best validation epoch ({best['epoch']}{averaged})")
    console.print(results_table(metrics, title=f"{config.eval.split} metrics (nats per example)", caption=caption))
    console.print(f"run directory: {run.path}")
    return Run(run, model, metrics)


def load_run(run_dir: str | Path, overrides: Iterable[str] = ()) -> tuple[ExperimentConfig, VariationalModel, Any]:
    """The config, model (best weights, on the configured device) and data set of a saved run.

    Only the ``eval`` section and ``trainer.device`` may be overridden: the rest
    describes the model that was trained.
    """
    run = RunDir.open(run_dir)
    overrides = list(overrides)
    fixed = [item for item in overrides if not item.startswith(("eval.", "trainer.device="))]
    if fixed:
        raise ConfigError([Problem(item.partition("=")[0], "only eval.* and trainer.device can be changed "
                                   "when loading a saved run") for item in fixed])
    config = load_config(saved_config(run.config_file), overrides)
    dataset, model = _build(config)
    checkpoint = load_checkpoint(run.best)
    try:
        model.load_state_dict(evaluation_weights(checkpoint))
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise CheckpointError(f"{run.best} does not match the model in {run.config_file}: {details}") from error
    return config, model.to(resolve_device(config.trainer.device)), dataset


def evaluate_run(run_dir: str | Path, overrides: Iterable[str] = ()) -> dict[str, float]:
    """Evaluate a saved run's best checkpoint (``flowzoo eval RUN_DIR``) and log the result."""
    config, model, dataset = load_run(run_dir, overrides)
    run = RunDir(run_dir)
    metrics = _evaluate(model, dataset.load(config.eval.split), config.eval)
    run.log("eval", split=config.eval.split, **metrics)
    caption = f"{metrics['examples']:,} images; {run.best}"
    console.print(results_table(metrics, title=f"{config.eval.split} metrics (nats per example)", caption=caption))
    return metrics


def sample_run(run_dir: str | Path, overrides: Iterable[str] = (), *, count: int = 64, pairs: int = 8,
               steps: int = 10, seed: int = 0, output: str | Path | None = None) -> dict[str, Path]:
    """Picture a saved run's best weights (``flowzoo sample RUN_DIR``): PNG grids of
    ``count`` samples from the prior, of ``count`` images of the evaluation split each
    beside its reconstruction, and of ``pairs`` latent interpolations in ``steps``
    steps between two such images (one row each, reconstructions at both ends). The
    images are a random draw from the split (:func:`~flowzoo.images.sample_images`),
    and ``seed`` seeds both it and the sampling noise.

    Returns:
        The path of each picture, under ``output`` (default ``RUN_DIR/samples``).
    """
    if min(count, pairs) < 1 or steps < 2:
        raise ConfigError([Problem("sample", f"count and pairs must be at least 1 and steps at least 2, "
                                   f"got count={count}, pairs={pairs}, steps={steps}")])
    config, model, dataset = load_run(run_dir, overrides)
    device = next(model.parameters()).device
    images = sample_images(dataset.load(config.eval.split), max(count, 2 * pairs), seed).to(device).float()
    if len(images) < 2 * pairs:
        raise ConfigError([Problem("sample", f"{2 * pairs} images needed for {pairs} interpolations, but the "
                                   f"{config.eval.split} split has {len(images)}")])
    folder = Path(output) if output is not None else Path(run_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        grids = {name: image_grid(pictures) for name, pictures in model.pictures(images[:count]).items()}
        path = model.interpolate(images[:pairs], images[pairs : 2 * pairs], steps)
        grids["interpolations"] = image_grid(path.flatten(0, 1), columns=steps)
    written = {}
    for name, grid in grids.items():
        written[name] = folder / f"{name}.png"
        save_png(grid, written[name])
        console.print(f"{name}: {written[name]}")
    return written


def _build(config: ExperimentConfig) -> tuple[Any, VariationalModel]:
    """The data set and the model of a resolved config, built without checking the specs again."""
    dataset = datasets.instantiate(config.data, "data")
    return dataset, models.instantiate(config.model, "model", data_shape=tuple(dataset.shape))


def _evaluate(model: VariationalModel, images: torch.Tensor, settings: EvalConfig,
              workers: Distributed = Distributed()) -> dict[str, float]:
    return evaluate(model, images, workers=workers, **evaluation_settings(settings),
                    progress=f"evaluating {settings.split} images with K={settings.iw_samples}")
