"""The run directory: resolved config, metrics log and checkpoints of one training run.

::

    runs/mnist_iaf-20261124-101500/
        config.yaml     the resolved config the run was started with
        metrics.jsonl   one JSON record per line: train, valid, test and eval events
        best.pt         checkpoint with the best validation −ELBO
        last.pt         the latest checkpoint (every ``trainer.checkpoint_every`` steps and
                        at the end of each epoch): what ``flowzoo resume`` continues from
        images/         samples-epochNNN.png and reconstructions-epochNNN.png per epoch
        tensorboard/    the same scalars and images for TensorBoard; at the end the test
                        metrics, the hyperparameters (HParams tab) and the config as text
        provenance.json what ran it, where and when: one entry per start or resume
        console.log     the console output of a run started by ``flowzoo sweep``
        wandb/          the Weights & Biases files, with ``logging.wandb.project`` set

A process that writes a run directory (train, resume, eval, sample) holds a lock on it
(``.lock``, released by the OS when the process ends, however it ends): a second
process (another ``flowzoo resume``, a sweep run twice at once) stops with an error
naming the holder instead of writing into the same files. Links in a run directory
that point outside it are refused; ``metrics.jsonl`` is only appended to, and cut back
on resume to the size the checkpoint recorded; every other file is replaced whole
(written beside it, then renamed). See docs/safety.md.
"""

from __future__ import annotations

__all__ = ["RunDir", "flat_config", "git_state", "lock_directory", "write_atomic", "check_new_run", "check_folder",
           "make_folder"]

import dataclasses
import datetime
import errno
import importlib.metadata
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import torch
import yaml

from flowzoo.errors import CheckpointError
from flowzoo.images import save_png

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks, runs are not guarded
    fcntl = None


def flat_config(node: Any, path: str = "") -> dict[str, Any]:
    """A config's values by dotted key: nested mappings are flattened, lists are values.

    Example:
        >>> flat_config({"seed": 1, "trainer": {"lr": 0.001}, "model": {"flows": [{"name": "iaf"}]}})
        {'seed': 1, 'trainer.lr': 0.001, 'model.flows': [{'name': 'iaf'}]}
    """
    if dataclasses.is_dataclass(node):
        node = dataclasses.asdict(node)
    if isinstance(node, Mapping):
        return {flat_key: flat_value for key, value in node.items()
                for flat_key, flat_value in flat_config(value, f"{path}.{key}" if path else str(key)).items()}
    return {path: node}


def git_state(directory: str | Path) -> dict[str, Any] | None:
    """The git work tree holding ``directory``: its root, commit and whether tracked files have
    uncommitted changes; None outside a work tree or without git."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30)

    try:
        root = git("rev-parse", "--show-toplevel")
        if root.returncode != 0:
            return None
        commit = git("rev-parse", "HEAD")  # fails in a repository without commits
        changes = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"root": root.stdout.strip(), "commit": commit.stdout.strip() if commit.returncode == 0 else None,
            "dirty": bool(changes.stdout.strip()) if changes.returncode == 0 else None}


def refuse_links(path: str, flags: int) -> int:
    """An ``opener`` that refuses to open a symbolic link (the file outside a run it may point to)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)


def write_error(path: Path, error: OSError) -> CheckpointError:
    """The message for a file of a run that cannot be written: a full disk, a read-only
    directory, a link (refused by :func:`refuse_links`) or anything else the OS says."""
    if error.errno == errno.ENOSPC:
        return CheckpointError(f"cannot write {path}: the disk is full. Free some space, then run "
                               "the same command again (or `flowzoo resume` the run)")
    if error.errno == errno.ELOOP:
        return CheckpointError(f"{path} is a symbolic link: flowzoo writes only files inside a run directory")
    return CheckpointError(f"cannot write {path}: {error.strerror or error}. Check that the directory "
                           "exists and that you may write in it")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` whole: a crash or a full disk leaves the old file
    (and no ``.partial``); raises :class:`CheckpointError` naming what went wrong."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "w", opener=refuse_links) as file:
            file.write(text)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise write_error(path, error) from None


NAME_BYTES = 255 - len("-20261124-101500-99")
"""The longest run name (UTF-8 bytes) that leaves room for the timestamp and suffix in a file name."""


def check_new_run(output_dir: str | Path, name: str) -> None:
    """Check that ``output_dir/name-<timestamp>`` can be created, before anything is built
    or loaded; raises :class:`CheckpointError` naming the problem."""
    if "\0" in str(output_dir) or "\0" in name:
        raise CheckpointError(f"name and output_dir may not hold NUL characters: {name!r} in {str(output_dir)!r}")
    if len(name.encode()) > NAME_BYTES:
        raise CheckpointError(f"name is {len(name.encode())} bytes long; run directory names allow at most "
                              f"{NAME_BYTES} (the file system's limit, less the timestamp)")
    check_folder(output_dir, "output_dir")


def check_folder(path: str | Path, option: str) -> None:
    """Check that the folder ``path`` given as ``option`` exists or can be created, and can be
    written, before any work is done; raises :class:`CheckpointError` naming the problem."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"{option} {path} cannot be a folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"{option} {path}: {existing} is not writable; choose another folder")


def make_folder(path: str | Path) -> Path:
    """``path`` created with its parents if missing; raises :class:`CheckpointError` if it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(path, error) from None
    return path


def check_links(path: Path) -> None:
    """Refuse a run directory holding symbolic links that point outside it (a run may have
    been prepared so that its writes land elsewhere)."""
    root = path.resolve()
    for folder, directories, files in os.walk(path):
        for entry in directories + files:
            link = Path(folder, entry)
            if link.is_symlink() and not link.resolve().is_relative_to(root):
                raise CheckpointError(f"{link} is a link to {os.readlink(link)}, outside the run directory: flowzoo "
                                      "writes only files inside a run. Replace the link with the file itself")


def lock_directory(path: Path, what: str) -> IO[str]:
    """Hold the POSIX lock of ``path/.lock`` for as long as the returned file stays open (at most
    until this process ends); raises :class:`CheckpointError` while another process holds it,
    or if ``path`` cannot be written or holds links outside it."""
    check_links(path)
    try:
        handle = open(path / ".lock", "a+", opener=refuse_links)
    except OSError as error:
        raise write_error(path / ".lock", error) from None
    if fcntl is not None:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CheckpointError(f"{path} is in use by {holder}: {what} can start once it has ended") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    threads = torch.get_num_threads()
    return f"{device.type} ({model}, {threads} thread{'s' if threads != 1 else ''})"


_ENVIRONMENT = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION", "SLURMD_NODENAME",
                "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
"""Environment variables that say where a job ran, recorded when set."""


def _attempt(device: torch.device) -> dict[str, Any]:
    """What this process is: one start or resume of a run."""
    return {
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": _device_name(device),
        "versions": {"flowzoo": _version("flowzoo"), "torch": torch.__version__, "nflows": _version("nflows"),
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "git": git_state(os.getcwd()),
        "flowzoo_git": git_state(Path(__file__).parent),  # the code, when it is not where the run started
        "environment": {key: os.environ[key] for key in _ENVIRONMENT if key in os.environ},
        "started": _now(),
        "finished": None,
    }


def _hparam(value: Any) -> int | float | str | bool:
    """A config value as TensorBoard's HParams plugin takes it: numbers, strings and booleans as they are."""
    if isinstance(value, (int, float, str, bool)):
        return value
    return "null" if value is None else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


class RunDir:
    """Paths and files of a run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.best = self.path / "best.pt"
        self.last = self.path / "last.pt"
        self.images = self.path / "images"
        self.tensorboard_dir = self.path / "tensorboard"
        self.provenance_file = self.path / "provenance.json"
        self.console_log = self.path / "console.log"
        self._writer = None
        self._config: Mapping[str, Any] | None = None
        self._lock: IO[str] | None = None
        self._wandb = None

    @classmethod
    def create(cls, output_dir: str | Path, name: str, config: Mapping[str, Any]) -> "RunDir":
        """A new, uniquely named run directory holding ``config`` (the resolved config as plain data)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / f"{name}-{stamp}"
        path, suffix = base, 1
        while path.exists():
            suffix += 1
            path = base.with_name(f"{base.name}-{suffix}")
        make_folder(path)
        run = cls(path)
        run.write_config(config)
        return run

    @classmethod
    def fresh(cls, path: str | Path) -> "RunDir":
        """A given directory for a new run (``flowzoo train --run-dir``): missing, or left by a start
        that never reached its first checkpoint; raises :class:`CheckpointError` if it holds a run."""
        run = cls(path)
        if run.last.is_file():
            raise CheckpointError(f"{run.path} already holds a run (last.pt): `flowzoo resume {run.path}` "
                                  "continues it; choose another directory for a new run")
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory; raises :class:`CheckpointError` if it is not one, or if
        it holds links to files outside it."""
        run = cls(path)
        if not run.config_file.is_file():
            raise CheckpointError(f"{run.path} is not a flowzoo run directory (no config.yaml in it)")
        check_links(run.path)
        return run

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write the resolved config (as plain data) to ``config.yaml``."""
        write_atomic(self.config_file, yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True))

    def begin(self, config: Mapping[str, Any], device: torch.device) -> None:
        """Claim the directory for this process (see the module docstring) and record the start:
        ``config.yaml`` (the resolved config as plain data), a new attempt in ``provenance.json``
        and, if configured, a W&B run."""
        self.lock()
        self.write_config(config)
        self._config = config
        provenance = self.provenance()
        provenance.setdefault("attempts", []).append(_attempt(device))
        if config["logging"]["wandb"]["project"]:
            self._wandb = self._start_wandb(config, provenance)
        self._write_provenance(provenance)

    def lock(self) -> None:
        """Claim the directory for this process until :meth:`finish` or the process ends
        (see the module docstring)."""
        make_folder(self.path)
        if self._lock is None:
            self._lock = lock_directory(self.path, "this command")

    def finish(self, kind: str, metrics: Mapping[str, Any], step: int) -> None:
        """Record the end of a run begun by :meth:`begin` whose final evaluation was logged as
        ``kind``: its end time; with ``trainer.tensorboard``, the metrics, the hyperparameters
        and the config for TensorBoard; the W&B summary."""
        provenance = self.provenance()
        provenance["attempts"][-1]["finished"] = _now()
        self._write_provenance(provenance)
        numbers = {f"{kind}/{key}": value for key, value in metrics.items() if _is_number(value)}
        if self._config["trainer"]["tensorboard"]:
            self._tensorboard_summary(numbers, step)
        if self._wandb is not None:
            self._wandb.summary.update(numbers)
            self._wandb.finish()
            self._wandb = None
        self.unlock()

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def provenance(self) -> dict[str, Any]:
        """The contents of ``provenance.json``: ``attempts`` (one per start or resume: command,
        working directory, host, process, device, versions, git state, environment, start and
        end times) and, for a sweep's run, ``sweep``; empty before the run has begun."""
        return json.loads(self.provenance_file.read_text()) if self.provenance_file.is_file() else {}

    def record_sweep_point(self, point: Mapping[str, Any]) -> None:
        """Say in ``provenance.json`` which sweep point this run is (before the run begins)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_provenance({**self.provenance(), "sweep": dict(point)})

    def _write_provenance(self, provenance: Mapping[str, Any]) -> None:
        write_atomic(self.provenance_file, json.dumps(provenance, indent=2) + "\n")

    def _start_wandb(self, config: Mapping[str, Any], provenance: dict[str, Any]):
        import wandb  # optional: checked by the config's validation

        settings = config["logging"]["wandb"]
        # A fixed id, kept in provenance.json, makes a resumed run continue the same W&B run.
        provenance.setdefault("wandb_id", uuid.uuid4().hex[:12])
        return wandb.init(project=settings["project"], entity=settings["entity"], group=settings["group"],
                          tags=list(settings["tags"]), mode=settings["mode"], dir=str(self.path), name=self.path.name,
                          id=provenance["wandb_id"], resume="allow", config=dict(config))

    def _tensorboard_summary(self, numbers: Mapping[str, float], step: int) -> None:
        """The final metrics as scalars and as the metrics of this run's HParams session, in the run's own
        event directory (``SummaryWriter.add_hparams`` would put them in a directory of their own)."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        writer = SummaryWriter(self.tensorboard_dir)
        parameters = {key: _hparam(value) for key, value in flat_config(self._config).items()}
        for summary in hparams(parameters, dict(numbers)):
            writer.file_writer.add_summary(summary)
        for tag, value in numbers.items():
            writer.add_scalar(tag, value, step)
        writer.close()

    def open_tensorboard(self, purge_step: int = 0) -> None:
        """Also write scalars and images as TensorBoard events from now on, starting with the
        config as text.

        Events of an earlier attempt at steps ≥ ``purge_step`` (after the checkpoint a
        resumed run starts from) are hidden by TensorBoard.
        """
        from torch.utils.tensorboard import SummaryWriter  # slow import, needed by training only

        self._writer = SummaryWriter(self.tensorboard_dir, purge_step=purge_step or None)
        if self.config_file.is_file():  # indented: TensorBoard's text plugin shows Markdown
            text = "\n".join("    " + line for line in self.config_file.read_text().splitlines())
            self._writer.add_text("config", text, purge_step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def log(self, kind: str, **record: Any) -> None:
        """Append one record to ``metrics.jsonl``; its numbers also go to TensorBoard and W&B as
        ``kind/key`` (the final evaluation reaches W&B as its summary, see :meth:`finish`)."""
        line = json.dumps(_strict({"kind": kind, "time": round(time.time(), 3), **record}), allow_nan=False) + "\n"
        try:
            with open(self.metrics_file, "a", opener=refuse_links) as file:
                file.write(line)
        except OSError as error:
            raise write_error(self.metrics_file, error) from None
        if "step" not in record:
            return
        numbers = {f"{kind}/{key}": value for key, value in record.items()
                   if _is_number(value) and key not in ("step", "epoch")}
        if self._writer is not None:
            for tag, value in numbers.items():
                self._writer.add_scalar(tag, value, record["step"])
            self._writer.flush()
        if self._wandb is not None and kind not in ("test", "eval"):  # those are at the best step, behind W&B's
            self._wandb.log(numbers, step=record["step"])

    def metrics_size(self) -> int:
        """Bytes in ``metrics.jsonl`` so far: stored in checkpoints to undo records written after them."""
        return self.metrics_file.stat().st_size if self.metrics_file.is_file() else 0

    def check_metrics(self, size: int) -> None:
        """Check that ``metrics.jsonl`` still holds the ``size`` bytes a checkpoint recorded,
        ending with a whole record; raises :class:`CheckpointError` if it was shortened or cut
        (resuming would lose records, or pad the file with NUL bytes)."""
        have = self.metrics_size()
        ends_record = size == 0
        if 0 < size <= have:
            with open(self.metrics_file, "rb", opener=refuse_links) as file:
                file.seek(size - 1)
                ends_record = file.read(1) == b"\n"
        if have < size or not ends_record:
            raise CheckpointError(f"{self.metrics_file} has {have:,} bytes, but the checkpoint was written after "
                                  f"{size:,} bytes of whole records: the log was changed after the checkpoint. "
                                  "Restore it, or train a new run")

    def truncate_metrics(self, size: int) -> None:
        """Drop the records written after a checkpoint, before a run resumes from it
        (checked first: see :meth:`check_metrics`)."""
        self.check_metrics(size)
        if self.metrics_file.is_file():
            with open(self.metrics_file, "r+b", opener=refuse_links) as file:
                file.truncate(size)

    def save_image(self, name: str, grid: Any, epoch: int, step: int) -> Path:
        """Write a ``(channels, H, W)`` uint8 grid as ``images/{name}-epochNNN.png`` (and to TensorBoard)."""
        self.images.mkdir(exist_ok=True)
        path = self.images / f"{name}-epoch{epoch:03d}.png"
        save_png(grid, path)
        if self._writer is not None:
            self._writer.add_image(name, grid, step)
        return path

    def records(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """The records of ``metrics.jsonl``, optionally only those of one kind."""
        if not self.metrics_file.is_file():
            return
        with open(self.metrics_file, encoding="utf-8", errors="replace") as file:
            for number, line in enumerate(file, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CheckpointError(f"{self.metrics_file}, line {number}, is not JSON ({error.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
                    raise CheckpointError(f"{self.metrics_file}, line {number}, is not a flowzoo record "
                                          "(a JSON object with a 'kind')")
                if kind is None or record["kind"] == kind:
                    yield record


def _strict(value: Any) -> Any:
    """A record as strict JSON has it: a non-finite number (NaN, ±inf, which JSON lacks) as null.

    Example:
        >>> _strict({"neg_elbo": float("nan"), "kl": [1.5, float("inf")], "step": 3})
        {'neg_elbo': None, 'kl': [1.5, None], 'step': 3}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
