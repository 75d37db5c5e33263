"""Where a sweep's runs execute: processes on this machine, or SLURM jobs through submitit.

Both run the same thing for each point, :func:`run_task`: ``flowzoo train CONFIG
OVERRIDES --run-dir RUN_DIR`` in a fresh process, or ``flowzoo resume RUN_DIR`` when the
run directory already has a checkpoint, with the console output appended to the run
directory's ``console.log``. A job therefore never depends on the process that started
it: a requeued SLURM job, or the next ``flowzoo sweep`` after a crash, continues from
``last.pt``.

- :class:`LocalExecutor` (``--executor local --jobs N``): N processes at a time, the
  CPU cores split between them (``OMP_NUM_THREADS``), and, on a machine with GPUs, one
  GPU each, or several jobs per GPU when N is larger (``CUDA_VISIBLE_DEVICES``).
- :class:`SlurmExecutor` (``--executor slurm``, ``pip install 'flowzoo[slurm]'``): one
  SLURM array job through submitit's ``AutoExecutor.map_array``, with partition, time
  limit, GPUs and CPUs per job. :class:`SlurmTask` follows submitit's ``Checkpointable``
  protocol, so a preempted or timed-out job is requeued and resumes from its last
  checkpoint. ``cluster="local"`` runs the same jobs as submitit processes on this
  machine (how the tests run this path).
"""

from __future__ import annotations

__all__ = [
    "Task",
    "run_task",
    "Job",
    "LocalOptions",
    "LocalExecutor",
    "SlurmOptions",
    "SlurmExecutor",
    "SlurmTask",
    "parse_time",
]

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol, Sequence

from flowzoo.errors import Problem, did_you_mean

CRASHED = 1
"""The exit status given to a job that ended without one (an exception in submitit)."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One sweep point for an executor: what to train and where."""

    config: str
    overrides: tuple[str, ...]
    run_dir: str
    cwd: str
    """The directory the sweep was started in: config paths and data roots are relative to it."""

    @property
    def log(self) -> Path:
        return Path(self.run_dir) / "console.log"

    def arguments(self) -> list[str]:
        """The ``flowzoo`` command that takes this point on from where its run directory is now."""
        if (Path(self.run_dir) / "last.pt").is_file():
            return ["resume", self.run_dir]
        return ["train", self.config, *self.overrides, "--run-dir", self.run_dir]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Task":
        fields = json.loads(text)
        return cls(**{**fields, "overrides": tuple(fields["overrides"])})


def run_task(task: Task) -> int:
    """Train or resume one point in this process (its console output goes wherever stdout and
    stderr go); returns the exit status of the ``flowzoo`` command."""
    from flowzoo.cli import main  # the command line imports the sweep, which imports this module

    os.chdir(task.cwd)
    arguments = task.arguments()
    if arguments[0] == "resume":  # the run's plugins: are those of the configs the sweep command named
        arguments.append("--trust-plugins")
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"==> {stamp}, {socket.gethostname()} (process {os.getpid()}): flowzoo {shlex.join(arguments)}", flush=True)
    return main(arguments)


class Job(Protocol):
    """A started task."""

    ident: str
    """The process id or the SLURM job id."""

    def poll(self) -> int | None:
        """The exit status once the task has ended, else None."""

    def cancel(self) -> None:
        """Ask the task to stop (it keeps its last checkpoint)."""


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs jobs may use, as ``CUDA_VISIBLE_DEVICES`` names them (none on a machine without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip() and gpu.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclasses.dataclass(frozen=True)
class LocalOptions:
    """``--executor local``."""

    jobs: int = 1
    """Runs at a time."""

    def problems(self) -> list[Problem]:
        return [Problem("--jobs", f"expected at least 1, got {self.jobs}")] if self.jobs < 1 else []

    def executor(self, sweep_dir: Path) -> "LocalExecutor":
        return LocalExecutor(self.jobs)


class _LocalJob:
    def __init__(self, process: subprocess.Popen, slot: int, executor: "LocalExecutor"):
        self.process, self.slot, self.executor = process, slot, executor
        self.ident = str(process.pid)

    def poll(self) -> int | None:
        status = self.process.poll()
        if status is not None and self.slot is not None:
            self.executor.free_slots.append(self.slot)
            self.slot = None
        return status

    def cancel(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # as Ctrl-C: the run stops and keeps last.pt


class LocalExecutor:
    """``jobs`` processes at a time on this machine.

    Each gets an equal share of the usable CPU cores as its thread count (unless
    ``OMP_NUM_THREADS`` says how many), and on a machine with GPUs the GPU of its slot:
    slot ``i`` of ``jobs`` uses GPU ``i mod G``, so more jobs than GPUs share them.
    """

    def __init__(self, jobs: int, cpus: int | None = None, gpus: Sequence[str] | None = None):
        self.capacity = jobs
        given = os.environ.get("OMP_NUM_THREADS", "")
        self.threads = int(given) if given.isdigit() and cpus is None else max(1, (cpus or _usable_cpus()) // jobs)
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        self.free_slots = list(range(jobs))

    def environment(self, slot: int) -> dict[str, str]:
        """The variables a job in ``slot`` runs with."""
        threads = str(self.threads)
        environment = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        if self.gpus:
            environment["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return environment

    def describe(self) -> str:
        gpus = f", GPU {', '.join(self.gpus)} in turn" if self.gpus else ""
        return (f"{self.capacity} local job{'s' if self.capacity != 1 else ''} at a time, "
                f"{self.threads} CPU thread{'s' if self.threads != 1 else ''} each{gpus}")

    def launch(self, tasks: Sequence[Task]) -> list[Job]:
        jobs = []
        for task in tasks:
            slot = self.free_slots.pop(0)
            with open(task.log, "a") as log:  # the child keeps its own descriptor
                # A session of its own: Ctrl-C reaches the sweep, which stops each job once (cancel).
                process = subprocess.Popen([sys.executable, "-m", "flowzoo.executors", task.to_json()],
                                           stdout=log, stderr=subprocess.STDOUT, cwd=task.cwd,
                                           env={**os.environ, **self.environment(slot)}, start_new_session=True)
            jobs.append(_LocalJob(process, slot, self))
        return jobs


def parse_time(text: str) -> int:
    """A SLURM time limit in minutes, from ``MINUTES``, ``HH:MM``, ``HH:MM:SS`` or ``D-HH:MM[:SS]``.

    Example:
        >>> parse_time("90"), parse_time("4:00:00"), parse_time("1-12:00")
        (90, 240, 2160)
    """
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d)(?::(\d\d))?|(\d+)", text.strip())
    if not match:
        raise ValueError(f"expected MINUTES, HH:MM[:SS] or D-HH:MM[:SS], got {text!r}")
    days, hours, minutes, seconds, only_minutes = match.groups()
    if only_minutes is not None:
        return int(only_minutes)
    return int(days or 0) * 1440 + int(hours) * 60 + int(minutes) + (1 if int(seconds or 0) else 0)


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """``--executor slurm``: what each job of the array asks SLURM for."""

    time: str | None = None
    """Time limit of each job; a job that reaches it is requeued and resumes."""
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    """At most this many jobs of the array at once."""
    sbatch: tuple[str, ...] = ()
    """Any other parameter of submitit's SlurmExecutor, as ``key=value`` (``account=abc``)."""
    cluster: str = "slurm"
    """submitit's cluster: ``slurm``, or ``local``/``debug`` to run the same jobs on this machine."""

    def problems(self) -> list[Problem]:
        problems = []
        try:
            import submitit
        except ImportError:
            return [Problem("--executor", "the slurm executor needs submitit: pip install 'flowzoo[slurm]'")]
        if self.time is None:
            problems.append(Problem("--time", "required with --executor slurm: each job's time limit, e.g. "
                                    "--time 4:00:00 (a job that reaches it is requeued and resumes)"))
        else:
            try:
                parse_time(self.time)
            except ValueError as error:
                problems.append(Problem("--time", str(error)))
        for option in ("gpus_per_job", "cpus_per_job", "mem_gb", "array_parallelism"):
            value = getattr(self, option)
            if value is not None and value < (0 if option == "gpus_per_job" else 1):
                problems.append(Problem(f"--{option.replace('_', '-')}", f"expected a positive number, got {value}"))
        known = submitit.SlurmExecutor._valid_parameters()
        for item in self.sbatch:
            key, sep, _ = item.partition("=")
            if not sep:
                problems.append(Problem("--slurm", f"'{item}' is not of the form key=value"))
            elif key not in known:
                problems.append(Problem("--slurm", f"unknown parameter '{key}'. {did_you_mean(key, known)}"))
        return problems

    def parameters(self, name: str) -> dict[str, Any]:
        """submitit ``update_parameters`` arguments: generic ones, and ``slurm_*`` ones that other clusters ignore."""
        import yaml

        parameters = {"name": name, "timeout_min": parse_time(self.time), "gpus_per_node": self.gpus_per_job,
                      "tasks_per_node": 1, "nodes": 1, "cpus_per_task": self.cpus_per_job, "mem_gb": self.mem_gb,
                      "slurm_partition": self.partition, "slurm_array_parallelism": self.array_parallelism}
        for item in self.sbatch:
            key, _, text = item.partition("=")
            parameters[f"slurm_{key}"] = yaml.safe_load(text)
        return {key: value for key, value in parameters.items() if value is not None}

    def executor(self, sweep_dir: Path) -> "SlurmExecutor":
        return SlurmExecutor(self, sweep_dir)


class SlurmTask:
    """A sweep point as a submitit job: :func:`run_task` with the console output in the run
    directory's ``console.log``. Its ``checkpoint`` (submitit's ``Checkpointable`` protocol)
    resubmits the same point when SLURM preempts the job or its time runs out; the new
    job resumes from ``last.pt``, losing at most ``trainer.checkpoint_every`` steps."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, task: Task) -> int:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        with open(task.log, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return run_task(task)

    def checkpoint(self, task: Task):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, task)


class _SubmititJob:
    def __init__(self, job):
        self.job = job
        self.ident = str(job.job_id)

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return CRASHED if self.job.exception() is not None else self.job.result()
        except Exception:  # a job killed without a result: submitit cannot say more
            return CRASHED

    def cancel(self) -> None:
        self.job.cancel(check=False)


class SlurmExecutor:
    """The points as one SLURM array job (``AutoExecutor.map_array``); logs of submitit
    itself under ``SWEEP_DIR/submitit/``."""

    capacity = sys.maxsize  # SLURM schedules them

    def __init__(self, options: SlurmOptions, sweep_dir: Path):
        import submitit

        self.options = options
        self.executor = submitit.AutoExecutor(folder=sweep_dir / "submitit", cluster=options.cluster)
        self.executor.update_parameters(**options.parameters(f"flowzoo-{sweep_dir.name}"))

    def describe(self) -> str:
        partition = f" on partition {self.options.partition}" if self.options.partition else ""
        return (f"submitit ({self.options.cluster}){partition}: array jobs of {self.options.time} with "
                f"{self.options.gpus_per_job} GPU(s) each")

    def launch(self, tasks: Sequence[Task]) -> list[Job]:
        jobs = self.executor.map_array(SlurmTask(self.options.cpus_per_job), list(tasks))
        return [_SubmititJob(job) for job in jobs]


if __name__ == "__main__":  # a LocalExecutor job
    sys.exit(run_task(Task.from_json(sys.argv[1])))
