"""``flowzoo report``: the numbers of real tiny runs, best-per-column marks, and bad run directories.

The runs train for 20 steps on the first images of real static binarized MNIST
(tests/fixtures/subset_data.py), in this process.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

from flowzoo.cli import main
from flowzoo.experiment import evaluate_run, train

from conftest import FIXTURES, tiny_config

# TINY at 10 steps of 50 per epoch, evaluated on the test split.
SMALL = tiny_config(data={"train": 500, "valid": 200, "test": 200}, eval={"split": "test"},
                    trainer={"epochs": 2, "batch_size": 50, "log_every": 4, "picture_count": 0, "tensorboard": False})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A plain VAE and an IAF VAE (with later evaluations at K = 6, 3, and 8 on valid), each
    with the wall seconds its training took and its trainable parameters."""
    output = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steps this small gain nothing from a second thread; on a busy machine they crawl
    trained = {}
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.syspath_prepend(str(FIXTURES))
            for name, model in (("plain", {"context_size": 0, "flows": []}), ("iaf", {})):
                started = time.perf_counter()
                run = train({**SMALL, "name": name, "output_dir": str(output), "model": {**SMALL["model"], **model}})
                trained[name] = {"dir": run.dir.path, "seconds": time.perf_counter() - started,
                                 "parameters": sum(p.numel() for p in run.model.parameters() if p.requires_grad)}
            for overrides in (["eval.iw_samples=6"], ["eval.iw_samples=3"], ["eval.iw_samples=8", "eval.split=valid"]):
                evaluate_run(trained["iaf"]["dir"], overrides)
    finally:
        torch.set_num_threads(threads)
    return trained


@pytest.fixture(scope="module")
def unfinished(runs, tmp_path_factory) -> Path:
    """The plain run as it was before its test evaluation: still training, as far as the files say."""
    copy = tmp_path_factory.mktemp("unfinished") / "plain-still-training"
    shutil.copytree(runs["plain"]["dir"], copy)
    kept = [line for line in records_text(copy) if json.loads(line)["kind"] != "test"]
    (copy / "metrics.jsonl").write_text("".join(kept))
    return copy


@pytest.fixture(scope="module")
def report(runs, unfinished, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("report")
    assert main(["report", str(runs["plain"]["dir"]), str(runs["iaf"]["dir"]), str(unfinished),
                 "--output", str(output)]) == 0
    return output


def records_text(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, records_text(run_dir)) if r["kind"] == kind]


def csv_rows(output: Path) -> dict[str, dict[str, str]]:
    with open(output / "report.csv", newline="") as file:
        return {row["run"]: row for row in csv.DictReader(file)}


def markdown_table(output: Path) -> list[dict[str, str]]:
    """report.md's table as one dict per row, label → cell text (with ** kept)."""
    lines = [line for line in (output / "report.md").read_text().splitlines() if line.startswith("|")]
    split = [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    header, rows = split[0], split[2:]
    return [dict(zip(header, row)) for row in rows]


def test_csv_numbers_are_the_records_of_each_run(runs, report):
    rows = csv_rows(report)
    for name, run in runs.items():
        row = rows[run["dir"].name]
        train, valid, (test,) = records(run["dir"], "train"), records(run["dir"], "valid"), records(run["dir"], "test")
        best = min(valid, key=lambda r: r["neg_elbo"])
        assert float(row["train_neg_elbo"]) == train[-1]["neg_elbo"]
        assert (float(row["valid_neg_elbo"]), int(row["best_epoch"])) == (best["neg_elbo"], best["epoch"])
        for column, key in (("test_neg_elbo", "neg_elbo"), ("test_recon", "recon"), ("test_kl", "kl")):
            assert float(row[column]) == test[key], column
        assert float(row["images_per_second"]) == pytest.approx(statistics.mean(r["images_per_second"] for r in train))
        assert (int(row["epochs"]), int(row["steps"])) == (2, 20)
        assert int(row["parameters"]) == run["parameters"]  # not the MADE masks in the IAF's state dict
        assert 0 < float(row["train_seconds"]) < run["seconds"]
        assert row["data"] == "mnist_subset" and row["bpd_elbo"] == row["bpd_iw"] == ""
    assert rows[runs["plain"]["dir"].name]["model"] == "no flow"
    assert rows[runs["iaf"]["dir"].name]["model"] == "2 × iaf"
    plain = rows[runs["plain"]["dir"].name]
    (test,) = records(runs["plain"]["dir"], "test")
    assert (float(plain["test_nll_iw"]), int(plain["iw_samples"])) == (test["nll_iw"], 2)


def test_the_test_evaluation_with_the_largest_k_gives_the_iwae_bound(runs, report):
    row = csv_rows(report)[runs["iaf"]["dir"].name]
    (k6,) = [r for r in records(runs["iaf"]["dir"], "eval") if r["iw_samples"] == 6]
    assert (float(row["test_nll_iw"]), int(row["iw_samples"])) == (k6["nll_iw"], 6)  # not K=3 (later), not valid K=8
    (test,) = records(runs["iaf"]["dir"], "test")
    assert float(row["test_neg_elbo"]) == test["neg_elbo"]  # the −ELBO terms stay those of the test record


def test_markdown_marks_the_best_row_of_each_scored_column(runs, unfinished, report):
    table = markdown_table(report)
    by_run = csv_rows(report)
    scored = {"train −ELBO": ("train_neg_elbo", min), "valid −ELBO": ("valid_neg_elbo", min),
              "test −ELBO": ("test_neg_elbo", min), "test IWAE −log p(x)": ("test_nll_iw", min),
              "images/s": ("images_per_second", max)}
    for label, (key, best) in scored.items():
        values = {row["run"]: float(row[key]) for row in by_run.values() if row[key]}
        winners = {run for run, value in values.items() if value == best(values.values())}
        marked = {row["run"] for row in table if row[label].startswith("**")}
        assert marked == winners, label
    for label in ("test −log p(x|z)", "test KL", "K", "params", "epochs", "steps", "train time"):
        assert not any(row[label].startswith("**") for row in table), label
    unfinished_row = next(row for row in table if row["run"] == unfinished.name)
    assert unfinished_row["test −ELBO"] == unfinished_row["K"] == "" and unfinished_row["valid −ELBO"]
    text = (report / "report.md").read_text()
    assert f"No test evaluation yet (still training, stopped, or evaluated on valid only): {unfinished.name}." in text
    assert "The IWAE bounds on mnist_subset use different K (2, 6)" in text
    assert all(str(run["dir"]) in text for run in runs.values())
    assert "bits/dim (ELBO)" not in table[0]  # no run has them


def test_best_is_marked_among_the_runs_on_the_same_data(runs, tmp_path):
    """Copies of the two runs relabelled as another data set, with 1000 nats more: each data set
    gets its own best mark."""
    copies = []
    for name, run in runs.items():
        copy = tmp_path / f"{name}-other-data"
        shutil.copytree(run["dir"], copy)
        config = copy / "config.yaml"
        config.write_text(config.read_text().replace("name: mnist_subset", "name: other_subset", 1))
        lines = [json.dumps({**r, "neg_elbo": r["neg_elbo"] + 1000.0}) + "\n" if r["kind"] == "test"
                 else json.dumps(r) + "\n" for r in map(json.loads, records_text(copy))]
        (copy / "metrics.jsonl").write_text("".join(lines))
        copies.append(copy)
    originals = [run["dir"] for run in runs.values()]
    assert main(["report", *map(str, originals + copies), "--output", str(tmp_path)]) == 0
    table = {row["run"]: row for row in markdown_table(tmp_path)}
    for group, data in ((originals, "mnist_subset"), (copies, "other_subset")):
        values = {d.name: float(table[d.name]["test −ELBO"].strip("*")) for d in group}
        assert {table[name]["data"] for name in values} == {data}
        marked = [name for name in values if table[name]["test −ELBO"].startswith("**")]
        assert marked == [min(values, key=values.get)], data
        assert f"The IWAE bounds on {data} use different K (2, 6)" in (tmp_path / "report.md").read_text()


def test_bits_per_dim_and_other_keys_of_8_bit_runs_are_optional(runs, tmp_path):
    """The test record of an 8-bit image run also has bits/dim and a KL per layer."""
    eight_bit = tmp_path / "iaf-8bit"
    shutil.copytree(runs["iaf"]["dir"], eight_bit)
    extra = {"bpd_elbo": 3.25, "bpd_iw": 3.125, "kl_per_layer": {"level1.block0": 1.5}}
    lines = [json.dumps({**record, **extra}) + "\n" if record["kind"] == "test" else json.dumps(record) + "\n"
             for record in map(json.loads, records_text(eight_bit))]
    (eight_bit / "metrics.jsonl").write_text("".join(lines))
    assert main(["report", str(runs["plain"]["dir"]), str(eight_bit), "--output", str(tmp_path)]) == 0
    rows = csv_rows(tmp_path)
    assert (rows[eight_bit.name]["bpd_elbo"], rows[eight_bit.name]["bpd_iw"]) == ("3.25", "")  # bpd_iw: K=6 eval's
    assert rows[runs["plain"]["dir"].name]["bpd_elbo"] == ""
    (row,) = [row for row in markdown_table(tmp_path) if row["run"] == eight_bit.name]
    assert row["bits/dim (ELBO)"] == "3.250"  # one value: nothing to mark it against


def test_sort_puts_the_best_first_and_blanks_last(runs, unfinished, tmp_path, capsys):
    assert main(["report", str(unfinished), str(runs["iaf"]["dir"]), str(runs["plain"]["dir"]),
                 "--output", str(tmp_path), "--sort", "test_neg_elbo"]) == 0
    order = list(csv_rows(tmp_path).values())
    tested = sorted((float(row["test_neg_elbo"]), row["run"]) for row in order[:2])
    assert [row["run"] for row in order] == [run for _, run in tested] + [unfinished.name]
    assert "runs compared" in capsys.readouterr().out


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "no run directory at"),
    (lambda tmp: tmp, "is not a flowzoo run directory"),
])
def test_a_path_that_is_not_a_run_is_a_user_error(runs, tmp_path, capsys, make, message):
    status = main(["report", str(runs["plain"]["dir"]), str(make(tmp_path)), "--output", str(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2 and message in error and "Traceback" not in error
    assert not (tmp_path / "report.md").exists()


def test_an_unknown_sort_column_names_the_closest(runs, tmp_path, capsys):
    assert main(["report", str(runs["plain"]["dir"]), "--output", str(tmp_path), "--sort", "test_nll"]) == 2
    assert "Did you mean 'test_nll_iw'?" in capsys.readouterr().err


def test_report_needs_no_plugin_of_the_runs(runs, tmp_path, monkeypatch):
    """The data set of these runs comes from a plugin module; reading them must not import it."""
    monkeypatch.delitem(sys.modules, "subset_data")
    assert main(["report", str(runs["iaf"]["dir"]), "--output", str(tmp_path)]) == 0
    assert "subset_data" not in sys.modules


def test_non_finite_validations_are_never_the_best_in_new_and_old_files(runs, tmp_path):
    """A non-finite −ELBO is null in metrics.jsonl (bare NaN in files written before): both read, neither best."""
    from flowzoo.report import summarize_run

    copy = tmp_path / "plain-then-nan"
    shutil.copytree(runs["plain"]["dir"], copy)
    valid = records(copy, "valid")
    late = {"kind": "valid", "time": time.time(), "step": valid[-1]["step"] + 10, "epoch": valid[-1]["epoch"] + 1}
    with open(copy / "metrics.jsonl", "a") as file:
        file.write(json.dumps({**valid[-1], **late, "neg_elbo": float("nan")}) + "\n")  # the old writer: NaN
        file.write(json.dumps({**valid[-1], **late, "neg_elbo": None}) + "\n")
    best = min(valid, key=lambda r: r["neg_elbo"])
    row = summarize_run(copy)
    assert (row["valid_neg_elbo"], row["best_epoch"]) == (best["neg_elbo"], best["epoch"])


# -- beside a publication's values: --published --------------------------------------------------

PUBLISHED = """
title: A test paper
reference: Someone et al., "A test paper", 2026
checked: false
note: Made up for this test.
rows:
  - {label: Plain VAE, config: plain, data: mnist_subset, source: "Table 1, row 1",
     neg_elbo: {mean: 90.5, std: 0.25}, nll: {mean: 85.125}}
  - {label: Nobody's, config: not_run, data: mnist_subset, source: "Table 1, row 2", nll: {mean: 80.0}}
  - {label: Other data, config: plain_cifar, data: cifar10, source: "Table 2, row 1", bpd: {mean: 3.5}}
  - {label: Plain again, config: plain, data: mnist, source: "Table 3, row 1", nll: {mean: 84.0}}
"""


def published_table(output: Path) -> list[dict[str, str]]:
    """The table under report.md's "Beside the published values" heading, one dict per row."""
    section = (output / "report.md").read_text().split("## Beside the published values: A test paper\n")[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    return [dict(zip(split[0], row)) for row in split[2:]]


def test_published_values_stand_beside_the_runs_of_the_config_they_name(runs, tmp_path, capsys):
    (tmp_path / "paper.yaml").write_text(PUBLISHED)
    output = tmp_path / "out"
    assert main(["report", str(runs["plain"]["dir"]), str(runs["iaf"]["dir"]), "--output", str(output),
                 "--published", str(tmp_path / "paper.yaml")]) == 0
    (test,) = records(runs["plain"]["dir"], "test")
    table = published_table(output)
    # the rows on the runs' data set or naming a run's config
    assert [row["published row"] for row in table] == ["Plain VAE", "Nobody's", "Plain again"]
    plain, nobody, again = table
    assert again["flowzoo group"] == "plain" and again["flowzoo test −ELBO"] == plain["flowzoo test −ELBO"]
    assert plain["published −ELBO"] == "90.50 ± 0.25" and plain["published −log p(x)"] == "85.12"
    assert plain["flowzoo group"] == "plain" and plain["runs"] == "1"
    assert plain["flowzoo test −ELBO"] == f"{test['neg_elbo']:.2f}"
    assert plain["flowzoo test IWAE −log p(x)"] == f"{test['nll_iw']:.2f}" and plain["K"] == "2"
    assert nobody["flowzoo group"] == "" and nobody["flowzoo test −ELBO"] == ""
    text = (output / "report.md").read_text()
    assert "NOT CHECKED against the publication" in text and "Made up for this test." in text
    assert "No published row names the config of: iaf." in text
    assert "beside the published values: A test paper" in capsys.readouterr().out


def test_a_bad_published_table_is_a_user_error_listing_every_problem(runs, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(PUBLISHED.replace("checked: false", "checkd: false")
                                       .replace("nll: {mean: 80.0}", "nll: 80.0"))
    status = main(["report", str(runs["plain"]["dir"]), "--output", str(tmp_path), "--published",
                   str(tmp_path / "bad.yaml")])
    error = capsys.readouterr().err
    assert status == 2 and "Traceback" not in error
    assert "checkd: unknown key 'checkd'. Did you mean 'checked'?" in error
    assert "checked: expected true or false" in error and "rows[1].nll: expected {mean: NUMBER}" in error
    assert not (tmp_path / "report.md").exists()
    assert main(["report", str(runs["plain"]["dir"]), "--published", "sylvester2019"]) == 2
    assert "Did you mean 'sylvester2018'?" in capsys.readouterr().err


def test_the_shipped_sylvester_table_names_the_paper_configs():
    from flowzoo.config import load_config
    from flowzoo.published import load_published

    table = load_published("sylvester2018")
    configs = {load_config(path).name: load_config(path).data["name"]
               for path in (FIXTURES.parent.parent / "configs" / "paper" / "sylvester").glob("*_*.yaml")
               if not path.stem.endswith("_base")}
    assert {row.config: row.data for row in table.rows} == configs  # every row a config, every config a row
    assert not table.checked and "not checked" in table.note
