"""From a config to a trained, evaluated run — and back from a run directory."""

from __future__ import annotations

__all__ = ["Run", "RunInterrupted", "train", "resume", "evaluate_run", "load_run", "sample_run", "RESUMABLE_KEYS"]

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import yaml

from flowzoo.checkpoint import RESUME_ENTRIES, evaluation_weights, load_checkpoint
from flowzoo.config import EvalConfig, ExperimentConfig, load_config
from flowzoo.console import config_panel, console, parameter_table, results_table
from flowzoo.distributed import Distributed, resolve_device, setup_distributed
from flowzoo.errors import CheckpointError, ConfigError, DataError, Problem
from flowzoo.evaluation import evaluate, evaluation_settings
from flowzoo.images import image_grid, sample_images, save_png
from flowzoo.legacy import saved_config, upgrade_config
from flowzoo.plugins import import_modules
from flowzoo.registry import datasets, models
from flowzoo.runs import RunDir, check_folder, check_new_run, flat_config, make_folder
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
        return _fit(config, run, _resume_state(run, config))
    if run_dir is None:
        check_new_run(config.output_dir, config.name)
        return _fit(config, None, None)
    check_new_run(Path(run_dir).parent, Path(run_dir).name)
    return _fit(config, RunDir.fresh(run_dir), None)


def resume(run_dir: str | Path, overrides: Iterable[str] = (), trust_plugins: bool = False) -> Run:
    """Continue a run from its last checkpoint (``flowzoo resume RUN_DIR``).

    On the CPU the resumed run computes exactly what the uninterrupted run would have:
    the checkpoint holds the weights, optimizer, schedule, scaler, data position and
    random states. ``overrides`` may change only :data:`RESUMABLE_KEYS`, e.g. ``trainer.epochs``;
    so may ``config.yaml``, which is checked against the config the checkpoint holds before
    anything is written. A run stopped before its first checkpoint starts again from the
    beginning. ``trust_plugins``: see :func:`load_run`.
    """
    run = RunDir.open(run_dir)
    overrides = list(overrides)
    fixed = [item for item in overrides if not _resumable(item.partition("=")[0])]
    if fixed:
        raise ConfigError([Problem(item.partition("=")[0], "a resumed run can change only "
                                   f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUMABLE_KEYS)}")
                           for item in fixed])
    _import_run_plugins(run, trust_plugins)
    config = load_config(saved_config(run.config_file), overrides)
    if not run.last.exists() and not run.best.exists():  # stopped before its first checkpoint
        return _fit(config, run, None)
    return _fit(config, run, _resume_state(run, config))


def _resumable(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in RESUMABLE_KEYS)


def _resume_state(run: RunDir, config: ExperimentConfig) -> dict[str, Any]:
    """The state of ``run.last``, after checking that ``config`` (the run's ``config.yaml`` and
    the overrides) differs from the checkpoint's config only in :data:`RESUMABLE_KEYS` and that
    ``metrics.jsonl`` holds the records the checkpoint was written after; writes nothing."""
    state = load_checkpoint(run.last, required=RESUME_ENTRIES)
    stored = state["config"]
    if not isinstance(stored, dict):
        raise CheckpointError(f"{run.last} holds no config to check {run.config_file} against")
    stored = upgrade_config(stored)
    if stored.get("plugins", []) != config.plugins:  # before the stored config imports anything
        raise ConfigError([Problem("plugins", f"is {config.plugins!r} in {run.config_file} but "
                                   f"{stored.get('plugins')!r} in {run.last}: a resumed run keeps its plugins")])
    saved, now = flat_config(load_config(stored)), flat_config(config)
    changed = [Problem(key, f"is {now.get(key)!r} in {run.config_file} but {saved.get(key)!r} in {run.last}")
               for key in sorted(set(saved) | set(now))
               if saved.get(key) != now.get(key) and not _resumable(key) and key != "output_dir"]  # runs may move
    if changed:
        raise ConfigError(changed + [Problem("", "a resumed run continues with the config it was trained with; "
                                             "only " + ", ".join(k + "*" if k.endswith(".") else k
                                                                 for k in RESUMABLE_KEYS)
                                             + " may change. Undo the edits, or train a new run")])
    run.check_metrics(state["metrics_size"])
    return state


def _import_run_plugins(run: RunDir, trusted: bool) -> None:
    """Import the modules a saved run's config lists under ``plugins:``: installed ones (on
    ``sys.path``) always, ones from the working directory only when ``trusted``: a run
    directory someone sent may name a module planted beside it."""
    try:
        listed = yaml.safe_load(run.config_file.read_text(encoding="utf-8")).get("plugins")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return  # the config loader reports the file
    if trusted or not isinstance(listed, list):
        return
    problems = import_modules(listed, search_working_directory=False)
    if problems:
        raise ConfigError(problems + [Problem("", "modules that are not installed are imported for a saved run "
                                              "only with --trust-plugins (or --import MODULE): only if you trust "
                                              "this run directory's origin")], str(run.config_file))


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
    empty = sorted({"train", "valid", config.eval.split} - {split for split, images in splits.items() if len(images)})
    if empty:
        raise DataError(f"data: the {' and '.join(empty)} split of {config.data['name']} holds no images; "
                        "training needs images in train and valid, and in the split eval.split names")
    torch.manual_seed(config.seed + workers.rank)  # each rank its own sampling noise
    if run is None:
        path = RunDir.create(config.output_dir, config.name, plain).path if workers.is_main else None
        run = RunDir(workers.broadcast(path))
    if workers.is_main:  # config.yaml again: a resumed run may have been given more epochs
        run.begin(plain, resolve_device(config.trainer.device, workers))  # lock, provenance.json, W&B
        if state is None:
            run.truncate_metrics(0)  # the records of a start stopped before its first checkpoint
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


def load_run(run_dir: str | Path, overrides: Iterable[str] = (),
             trust_plugins: bool = False) -> tuple[ExperimentConfig, VariationalModel, Any]:
    """The config, model (best weights, on the configured device) and data set of a saved run.

    Only the ``eval`` section and ``trainer.device`` may be overridden: the rest
    describes the model that was trained. Of the modules its config lists under
    ``plugins:``, those not installed (found only in the working directory) are imported
    only with ``trust_plugins``.
    """
    run = RunDir.open(run_dir)
    overrides = list(overrides)
    fixed = [item for item in overrides if not item.startswith(("eval.", "trainer.device="))]
    if fixed:
        raise ConfigError([Problem(item.partition("=")[0], "only eval.* and trainer.device can be changed "
                                   "when loading a saved run") for item in fixed])
    _import_run_plugins(run, trust_plugins)
    config = load_config(saved_config(run.config_file), overrides)
    dataset, model = _build(config)
    checkpoint = load_checkpoint(run.best)
    try:
        model.load_state_dict(evaluation_weights(checkpoint))
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise CheckpointError(f"{run.best} does not match the model in {run.config_file}: {details}") from error
    return config, model.to(resolve_device(config.trainer.device)), dataset


def evaluate_run(run_dir: str | Path, overrides: Iterable[str] = (), trust_plugins: bool = False) -> dict[str, float]:
    """Evaluate a saved run's best checkpoint (``flowzoo eval RUN_DIR``) and log the result.

    The run is locked (and so checked writable) before the evaluation starts."""
    config, model, dataset = load_run(run_dir, overrides, trust_plugins)
    run = RunDir(run_dir)
    run.lock()
    try:
        metrics = _evaluate(model, dataset.load(config.eval.split), config.eval)
        run.log("eval", split=config.eval.split, **metrics)
    finally:
        run.unlock()
    caption = f"{metrics['examples']:,} images; {run.best}"
    console.print(results_table(metrics, title=f"{config.eval.split} metrics (nats per example)", caption=caption))
    return metrics


def sample_run(run_dir: str | Path, overrides: Iterable[str] = (), *, count: int = 64, pairs: int = 8,
               steps: int = 10, seed: int = 0, output: str | Path | None = None,
               trust_plugins: bool = False) -> dict[str, Path]:
    """Picture a saved run's best weights (``flowzoo sample RUN_DIR``): PNG grids of
    ``count`` samples from the prior, of ``count`` images of the evaluation split each
    beside its reconstruction, and of ``pairs`` latent interpolations in ``steps``
    steps between two such images (one row each, reconstructions at both ends). The
    images are a random draw from the split (:func:`~flowzoo.images.sample_images`),
    and ``seed`` seeds both it and the sampling noise.

    Returns:
        The path of each picture, under ``output`` (default ``RUN_DIR/samples``; the run is
        locked while they are written there).
    """
    if min(count, pairs) < 1 or steps < 2:
        raise ConfigError([Problem("sample", f"count and pairs must be at least 1 and steps at least 2, "
                                   f"got count={count}, pairs={pairs}, steps={steps}")])
    run = RunDir.open(run_dir)
    if output is None:
        run.lock()
    try:
        return _sample(run, overrides, count, pairs, steps, seed, output, trust_plugins)
    finally:
        run.unlock()


def _sample(run: RunDir, overrides: Iterable[str], count: int, pairs: int, steps: int, seed: int,
            output: str | Path | None, trust_plugins: bool) -> dict[str, Path]:
    folder = Path(output) if output is not None else run.path / "samples"
    check_folder(folder, "--output")
    config, model, dataset = load_run(run.path, overrides, trust_plugins)
    device = next(model.parameters()).device
    images = sample_images(dataset.load(config.eval.split), max(count, 2 * pairs), seed).to(device).float()
    if len(images) < 2 * pairs:
        raise ConfigError([Problem("sample", f"{2 * pairs} images needed for {pairs} interpolations, but the "
                                   f"{config.eval.split} split has {len(images)}")])
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        grids = {name: image_grid(pictures) for name, pictures in model.pictures(images[:count]).items()}
        path = model.interpolate(images[:pairs], images[pairs : 2 * pairs], steps)
        grids["interpolations"] = image_grid(path.flatten(0, 1), columns=steps)
    make_folder(folder)
    written = {}
    for name, grid in grids.items():
        written[name] = folder / f"{name}.png"
        save_png(grid, written[name])
        console.print(f"{name}: {written[name]}")
    return written


def _build(config: ExperimentConfig) -> tuple[Any, VariationalModel]:
    """The data set and the model of a resolved config, built without checking the specs again
    (but checked to fit in memory first)."""
    dataset = datasets.instantiate(config.data, "data")
    check_model_size(config, tuple(dataset.shape))
    return dataset, models.instantiate(config.model, "model", data_shape=tuple(dataset.shape))


MAX_FLOW_STEPS = 1_000
"""More flow steps than any published model uses (tens), and few enough to build in seconds."""

TRAINING_COPIES = 4
"""Copies of each parameter that training holds: weights, gradients and Adam's two moments."""


def check_model_size(config: ExperimentConfig, data_shape: tuple[int, ...]) -> None:
    """Refuse a model that cannot be built and trained here, before it is built: more than
    :data:`MAX_FLOW_STEPS` flow steps, or parameters whose training state (counted on torch's
    ``meta`` device, which allocates nothing) is larger than the device's memory."""
    flows = config.model.get("flows") or []
    steps = sum(entry.get("repeat", 1) * (2 if entry.get("between") else 1) for entry in flows
                if isinstance(entry, Mapping))
    if steps > MAX_FLOW_STEPS:
        raise ConfigError([Problem("model.flows", f"{steps:,} flow steps (repeat and between included); "
                                   f"at most {MAX_FLOW_STEPS:,} are allowed")])
    try:
        with torch.device("meta"):
            probe = models.instantiate(config.model, "model", data_shape=data_shape)
    except ConfigError:
        raise
    except Exception:  # a component that cannot be built without memory: the real build checks it
        return
    parameters = sum(p.numel() for p in probe.parameters())
    needed = parameters * 4 * TRAINING_COPIES  # float32
    device = resolve_device(config.trainer.device)
    available = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
                 else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if needed > available:
        raise ConfigError([Problem("model", f"{parameters:,} parameters: training them needs about "
                                   f"{needed / 2**30:,.1f} GiB (weights, gradients, optimizer state), more than "
                                   f"the {available / 2**30:,.1f} GiB of {device.type} memory here; make the "
                                   "hidden sizes or the number of flow steps smaller")])


def _evaluate(model: VariationalModel, images: torch.Tensor, settings: EvalConfig,
              workers: Distributed = Distributed()) -> dict[str, float]:
    return evaluate(model, images, workers=workers, **evaluation_settings(settings),
                    progress=f"evaluating {settings.split} images with K={settings.iw_samples}")
