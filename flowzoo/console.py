"""Rich console output: config panel, parameter table, training progress and epoch lines, results."""

from __future__ import annotations

__all__ = [
    "console",
    "config_panel",
    "parameter_table",
    "results_table",
    "training_progress",
    "EvaluationProgress",
    "training_status",
    "epoch_summary",
    "early_stop_summary",
    "parameter_count",
    "METRIC_LABELS",
    "BITS_PER_DIM",
]

import math
import time
from typing import Any, Mapping

import yaml
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax
from rich.table import Table
from torch import nn

console = Console()

METRIC_LABELS = {
    "neg_elbo": "−ELBO",
    "recon": "reconstruction −log p(x|z)",
    "kl": "KL term, log q(z|x) − log p(z)",
    "nll_iw": "IWAE −log p(x)",
}
BITS_PER_DIM = {"neg_elbo": "bpd_elbo", "nll_iw": "bpd_iw"}
"""The metric in bits/dim that goes with each bound, for 8-bit images."""


def config_panel(config: dict[str, Any], title: str) -> Panel:
    """The resolved config (as plain data) as highlighted YAML, short lists on one line."""
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None,
                          allow_unicode=True, width=console.width - 30)  # YAML overshoots its width by an item
    return Panel(Syntax(text.rstrip(), "yaml", background_color="default", word_wrap=True), title=escape(title))


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_table(model: nn.Module) -> Table:
    """Trainable parameters per component of a :class:`~flowzoo.vae.VAE`."""
    total = parameter_count(model)
    table = Table(title="model", title_justify="left")
    table.add_column("component")
    table.add_column("module")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    for name, module in model.components().items():
        count = parameter_count(module)
        table.add_row(name, type(module).__name__, f"{count:,}", f"{count / max(total, 1):.1%}")
    table.add_row("total", "", f"{total:,}", "", style="bold")
    return table


def results_table(metrics: Mapping[str, Any], title: str, caption: str = "") -> Table:
    """Evaluation metrics in nats per example (and bits/dim for 8-bit images), saying
    which K the IWAE bound used, with the KL term of each stochastic layer if several."""
    table = Table(title=title, title_justify="left", caption=caption or None, caption_justify="left")
    table.add_column("metric")
    table.add_column("nats", justify="right")
    bits = "bpd_elbo" in metrics
    if bits:
        table.add_column("bits/dim", justify="right")
    for key, label in METRIC_LABELS.items():
        if key == "nll_iw":
            label += f" (K={metrics['iw_samples']})"
        row = [label, f"{metrics[key]:.2f}"]
        if bits:
            row.append(f"{metrics[BITS_PER_DIM[key]]:.3f}" if key in BITS_PER_DIM else "")
        table.add_row(*row)
        if key == "kl":
            for layer, value in metrics.get("kl_per_layer", {}).items():
                table.add_row(f"  {layer}", f"{value:.2f}", *[""] * bits, style="dim")
    return table


def training_progress(disable: bool = False) -> Progress:
    """A progress bar whose ``status`` field shows the running losses and speed."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


class EvaluationProgress:
    """Images evaluated so far, with the time left: a progress bar on a terminal, and a plain
    line at every tenth of the way otherwise (a log file, a pipe, a batch job's output).

    Example:
        >>> with EvaluationProgress("evaluating", total=4, disable=True) as progress:
        ...     progress.advance(2)
        >>> progress.done
        2
    """

    def __init__(self, description: str, total: int, disable: bool = False):
        self.description, self.total, self.disable = description, total, disable
        self.done, self.printed_tenths = 0, 0
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                            disable=disable or not console.is_terminal)

    def __enter__(self) -> "EvaluationProgress":
        self.started = time.perf_counter()
        self.bar.__enter__()
        self.task = self.bar.add_task(self.description, total=self.total)
        return self

    def advance(self, images: int) -> None:
        self.done += images
        self.bar.update(self.task, completed=self.done)
        tenths = self.done * 10 // self.total
        if self.disable or console.is_terminal or tenths <= self.printed_tenths:
            return
        self.printed_tenths = tenths
        elapsed = time.perf_counter() - self.started
        left = elapsed * (self.total - self.done) / self.done
        console.print(f"{self.description}: {self.done:,}/{self.total:,} images, {elapsed:.0f} s elapsed, "
                      f"ETA {left:.0f} s", highlight=False)

    def __exit__(self, *error) -> None:
        self.bar.__exit__(*error)


def training_status(means: Mapping[str, float], rate: float) -> str:
    """The progress bar's status: the running means of the model's losses, and the speed."""
    bits = f"  {means['bpd']:.3f} bits/dim" if "bpd" in means else ""
    return (f"loss {means['loss']:.2f}  −ELBO {means.get('neg_elbo', math.nan):.2f}  "
            f"KL {means.get('kl', math.nan):.2f}{bits}  {rate:,.0f} img/s")


def epoch_summary(epoch: int, valid: Mapping[str, float], best: bool,
                  waiting: tuple[int, int] | None = None) -> str:
    """The line printed after each epoch: its validation metrics, marked when the best so far, and
    with early stopping the ``(epochs without improvement, patience)`` once any have counted."""
    mark = " [green](best)" if best else ""
    bits = f", {valid['bpd_elbo']:.3f} bits/dim" if "bpd_elbo" in valid else ""
    wait = f" [dim]no improvement for {waiting[0]}/{waiting[1]} epochs" if waiting and waiting[0] else ""
    return (f"epoch {epoch}: valid −ELBO {valid['neg_elbo']:.2f} "
            f"(recon {valid['recon']:.2f}, KL {valid['kl']:.2f}{bits}){mark}{wait}")


def early_stop_summary(epoch: int, stale_epochs: int, best_epoch: int, best_valid: float, start_epoch: int) -> str:
    """The line printed when early stopping ends a run."""
    counted = f", counted from epoch {start_epoch}" if start_epoch > 1 else ""
    return (f"[yellow]early stopping after epoch {epoch}: {stale_epochs} epochs in a row{counted} without a "
            f"validation −ELBO below {best_valid:.2f}, that of epoch {best_epoch}, whose weights are evaluated")
