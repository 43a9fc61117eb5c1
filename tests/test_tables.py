"""Result tables: the writer's documented columns from a fixture CSV, the bar chart, and the runner
that skips finished rows, collects tested ones, resumes half-finished ones and refuses mixed settings."""

import csv
import importlib.util
import statistics
from pathlib import Path

import pytest

import engine.table_runner as runner
from engine.cli import run_cli
from engine.table_runner import load_table, parse_seeds, select_rows
from engine.tables import (
    RESULT_COLUMNS,
    plot_bars,
    read_results,
    table_columns,
    write_markdown,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]

FIXTURE = """row,method,seed,accuracy,qwk,macro_f1,macro_auc,psnr,ssim,psnr_bicubic,ssim_bicubic,lesion_aupr,scale,epoch_seconds,wall_seconds,referable_auc,psnr_lesion
deepmt_dr,deepmt_dr,0,0.50,0.80,0.40,0.86,33.4,0.878,31.8,0.864,0.25,4,600,700,0.90,26.0
deepmt_dr,deepmt_dr,1,0.52,0.84,0.42,0.88,33.6,0.880,31.8,0.864,0.27,4,620,710,0.92,26.2
deepmt_dr,deepmt_dr,2,0.48,0.76,0.38,0.84,33.2,0.876,31.8,0.864,0.23,4,580,690,0.88,25.8
lr_cls,lr_cls,0,0.45,0.70,0.35,0.80,,,31.8,0.864,,4,240,300,0.80,
lr_cls,lr_cls,1,0.47,0.75,0.37,0.82,,,31.8,0.864,,4,240,300,0.80,
lr_cls,lr_cls,2,0.43,0.74,0.33,0.78,,,31.8,0.864,,4,240,300,0.80,
"""


def _table(tmp_path, reference="lr_cls"):
    fixture = tmp_path / "results.csv"
    fixture.write_text(FIXTURE)
    descriptions = {"deepmt_dr": "the method", "lr_cls": "the naive baseline", "hr_cls": "not run"}
    path = write_markdown(
        read_results(fixture),
        tmp_path / "table.md",
        "Compared",
        descriptions,
        reference,
        ["Command: `x`"],
    )
    return path.read_text().splitlines()


def _cells(lines, row):
    line = next(line for line in lines if line.startswith(f"| {row} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_table_writer_produces_the_documented_columns(tmp_path):
    lines = _table(tmp_path)
    header = [cell.strip() for cell in lines[4].strip("|").split("|")]
    assert header == table_columns("lr_cls") == [
        "row", "seeds", "accuracy", "QWK", "macro F1", "macro AUC", "referable AUC", "PSNR (dB)", "SSIM", "PSNR lesions (dB)",
        "lesion AUPR", "ΔQWK vs lr_cls", "train min",
    ]  # fmt: skip
    deepmt = dict(zip(header, _cells(lines, "deepmt_dr")))
    assert deepmt["seeds"] == "3"
    assert deepmt["QWK"] == f"0.800 ± {statistics.stdev([0.80, 0.84, 0.76]):.3f}"
    assert deepmt["PSNR (dB)"] == "33.40 ± 0.20" and deepmt["lesion AUPR"] == "0.250 ± 0.020"
    assert (
        deepmt["PSNR lesions (dB)"] == "26.00 ± 0.20" and deepmt["referable AUC"] == "0.900 ± 0.020"
    )
    differences = [0.80 - 0.70, 0.84 - 0.75, 0.76 - 0.74]
    assert (
        deepmt["ΔQWK vs lr_cls"]
        == f"+{statistics.fmean(differences):.3f} ± {statistics.stdev(differences):.3f}"
    )
    assert deepmt["train min"] == "10.0"
    baseline = dict(zip(header, _cells(lines, "lr_cls")))
    assert (
        baseline["PSNR (dB)"]
        == baseline["SSIM"]
        == baseline["lesion AUPR"]
        == baseline["ΔQWK vs lr_cls"]
        == "-"
    )
    assert not any(
        line.startswith("| hr_cls | 0") for line in lines
    )  # rows without results are left out
    text = "\n".join(lines)
    assert (
        "x4: 31.80 dB / 0.864" in text
        and "Command: `x`" in text
        and "| lr_cls | the naive baseline |" in text
    )
    assert "Wall time of all runs (training, rendering, testing): 50 min" in text


def test_table_without_reference_has_no_difference_column(tmp_path):
    header = [cell.strip() for cell in _table(tmp_path, reference=None)[4].strip("|").split("|")]
    assert not any(cell.startswith("ΔQWK") for cell in header)


def test_the_graders_training_ce_is_a_column_when_the_runs_recorded_it(tmp_path):
    lines = _table(tmp_path)
    assert "grader train CE" not in lines[4]  # older results.csv: no such column
    recorded = FIXTURE.replace("psnr_lesion\n", "psnr_lesion,grader_train_ce\n")
    recorded = "\n".join(
        line
        + (",1.609" if line.startswith("lr_cls") else ",0.9" if line.startswith("deep") else "")
        for line in recorded.splitlines()
    )
    (tmp_path / "results.csv").write_text(recorded + "\n")
    path = write_markdown(
        read_results(tmp_path / "results.csv"), tmp_path / "t.md", "T", {"lr_cls": "b"}, "lr_cls"
    )
    lines = path.read_text().splitlines()
    header = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert header == table_columns("lr_cls", train_ce=True)
    assert dict(zip(header, _cells(lines, "lr_cls")))["grader train CE"] == "1.61 ± 0.00"
    assert dict(zip(header, _cells(lines, "deepmt_dr")))["grader train CE"] == "0.90 ± 0.00"
    assert any("ln 5 = 1.61" in line for line in lines)


def test_bar_chart_and_results_round_trip(tmp_path):
    fixture = tmp_path / "fixture.csv"
    fixture.write_text(FIXTURE)
    results = read_results(fixture)
    assert plot_bars(results, tmp_path / "chart.png", "Compared").stat().st_size > 1000
    write_results(
        [{**results[0], "qwk": float("nan")}, {"row": "x", "seed": 0, "psnr": None}],
        tmp_path / "out.csv",
    )
    with (tmp_path / "out.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(RESULT_COLUMNS) and rows[0]["qwk"] == "" and rows[1]["psnr"] == ""


def test_rows_files_seeds_and_selection():
    for folder in ("Compared Methods", "Ablation study"):
        spec = load_table(ROOT / folder / "rows.yaml")
        assert spec.reference in {row.name for row in spec.rows}
    methods = load_table(ROOT / "Compared Methods" / "rows.yaml")
    assert [row.name for row in select_rows(methods, "lr_cls,deepmt_dr")] == ["deepmt_dr", "lr_cls"]
    with pytest.raises(runner.ConfigError, match="unknown row"):
        select_rows(methods, "bogus")
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("5,7") == [5, 7]
    with pytest.raises(runner.ConfigError, match="--seeds"):
        parse_seeds("0,0")


def test_table_wide_overrides_come_before_each_rows_own(tmp_path):
    rows = tmp_path / "rows.yaml"
    rows.write_text(
        "title: t\noverrides: [train.stage=cls, data.flip=true]\nrows:\n"
        "  a: {method: deepmt_dr}\n  b: {method: deepmt_dr, overrides: [data.flip=false]}\n"
    )
    spec = load_table(rows)
    assert [row.overrides for row in spec.rows] == [
        ("train.stage=cls", "data.flip=true"),
        ("train.stage=cls", "data.flip=true", "data.flip=false"),
    ]
    rows.write_text("title: t\noverrides: train.stage=cls\nrows:\n  a: {method: deepmt_dr}\n")
    with pytest.raises(runner.ConfigError, match="overrides .for every row"):
        load_table(rows)
    levers = load_table(ROOT / "scripts" / "idrid_levers.yaml")
    assert levers.reference == "baseline" and all(
        "train.stage=cls" in row.overrides for row in levers.rows
    )


def _script(folder):
    spec = importlib.util.spec_from_file_location(
        f"run_{folder.split()[0].lower()}", ROOT / folder / "run.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runner_skips_finished_rows_collects_tested_ones_and_resumes(tmp_path, monkeypatch, capsys):
    script = _script("Compared Methods")
    out = tmp_path / "table"
    argv = [
        "--quiet",
        "--quick",
        "--jobs",
        "1",
        "--seeds",
        "1",
        "--rows",
        "lr_cls",
        "--out",
        str(out),
        "train.max_steps_per_epoch=1",
        "run.threads=1",
    ]
    assert run_cli(script.main, argv) == 0
    results = (out / "results.csv").read_text()
    assert [row["row"] for row in read_results(out / "results.csv")] == ["lr_cls"]
    assert (out / "table.md").is_file() and (out / "table.png").stat().st_size > 0
    assert (out / "runs" / "lr_cls_seed0" / "metrics.json").is_file()
    (recorded,) = read_results(out / "results.csv")
    assert float(recorded["grader_train_ce"]) > 0  # the last cls epoch's train_ce of log.csv

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(runner, "train_and_test", no_training)
    assert run_cli(script.main, argv) == 0  # finished: in results.csv
    assert (out / "results.csv").read_text() == results
    (out / "results.csv").unlink()
    assert run_cli(script.main, argv) == 0  # tested: collected from metrics.json
    assert [row["qwk"] for row in read_results(out / "results.csv")] == [
        row["qwk"] for row in csv.DictReader(results.splitlines())
    ]

    monkeypatch.undo()
    resumed = []
    fit = runner.Trainer.fit
    monkeypatch.setattr(
        runner.Trainer,
        "fit",
        lambda self, resume=False: resumed.append(resume) or fit(self, resume),
    )
    (out / "results.csv").unlink()
    (out / "runs" / "lr_cls_seed0" / "metrics.json").unlink()
    assert (
        run_cli(script.main, argv) == 0
    )  # half-finished (checkpoint, no metrics): resumed, not restarted
    assert resumed == [True] and (out / "runs" / "lr_cls_seed0" / "metrics.json").is_file()

    assert (
        run_cli(script.main, [*argv, "data.n_train=12"]) == 2
    )  # other settings: refused, nothing mixed
    assert "trained with other settings (data.n_train: 16 -> 12)" in capsys.readouterr().err


def test_runner_reuses_another_tables_run_with_the_same_settings_only(tmp_path, monkeypatch):
    script = _script("Compared Methods")
    first, second = tmp_path / "first", tmp_path / "second"
    options = ["--quiet", "--quick", "--jobs", "1", "--seeds", "1", "--rows", "lr_cls"]
    common = [*options, "train.max_steps_per_epoch=1", "run.threads=1"]
    assert run_cli(script.main, [*common, "--out", str(first)]) == 0
    [trained] = read_results(first / "results.csv")

    def no_training(*args, **kwargs):
        raise AssertionError("a run with the same settings was trained again")

    monkeypatch.setattr(runner, "train_and_test", no_training)
    assert run_cli(script.main, [*common, "--out", str(second), "--reuse-from", str(first)]) == 0
    [reused] = read_results(second / "results.csv")
    assert reused["qwk"] == trained["qwk"] and reused["epoch_seconds"] == trained["epoch_seconds"]
    copied = second / "runs" / "lr_cls_seed0"
    assert (copied / "metrics.json").is_file() and (copied / "checkpoints" / "best.pt").is_file()
    assert (
        first / "runs" / "lr_cls_seed0" / "metrics.json"
    ).is_file()  # the source is left as it was
    # The copy is the second table's own run now: its config names the new folder, so a rerun collects it.
    assert f"out_dir: {second / 'runs'}" in (copied / "config.yaml").read_text()
    assert run_cli(script.main, [*common, "--out", str(second)]) == 0

    monkeypatch.undo()
    trainings = []
    monkeypatch.setattr(
        runner,
        "train_and_test",
        lambda config, *args, **kwargs: trainings.append(config.data.n_train) or no_training(),
    )
    with pytest.raises(
        AssertionError, match="trained again"
    ):  # other settings: trained, not reused
        run_cli(
            script.main,
            [
                *options,
                "--out",
                str(tmp_path / "third"),
                "--reuse-from",
                str(first),
                "train.max_steps_per_epoch=1",
                "run.threads=1",
                "data.n_train=12",
            ],
        )
    assert trainings == [12]


@pytest.mark.parametrize("table", ["Compared Methods", "Ablation study"])
def test_every_row_of_a_table_builds_from_the_table_preset(table, tmp_path):
    """A row whose settings the preset's validation refuses would stop the runner at its start."""
    spec = load_table(ROOT / table / "rows.yaml")
    for row in spec.rows:
        config = runner.row_config(row, 0, runner.TABLE_PRESET, [], tmp_path)
        assert config.method == row.method and config.run.name == f"{row.name}_seed0"


def test_ablation_script_lists_its_rows(capsys):
    assert run_cli(_script("Ablation study").main, ["--list"]) == 0
    out = capsys.readouterr().out
    assert "no_task_aware" in out and "loss.task_aware_weight=0" in out


def test_runner_jobs_train_rows_in_parallel_processes(tmp_path):
    out = tmp_path / "table"
    argv = [
        "--quiet",
        "--quick",
        "--jobs",
        "2",
        "--seeds",
        "1",
        "--rows",
        "lr_cls,chen",
        "--out",
        str(out),
        "train.max_steps_per_epoch=1",
    ]
    assert run_cli(_script("Compared Methods").main, argv) == 0
    results = read_results(out / "results.csv")
    assert sorted(row["row"] for row in results) == ["chen", "lr_cls"] and all(
        row["wall_seconds"] for row in results
    )
    assert "| chen | 1 |" in (out / "table.md").read_text()


def test_runner_tests_on_the_validation_split_when_asked(tmp_path):
    out = tmp_path / "table"
    argv = [
        "--quiet",
        "--quick",
        "--jobs",
        "1",
        "--seeds",
        "1",
        "--rows",
        "lr_cls",
        "--split",
        "val",
        "--out",
        str(out),
        "train.max_steps_per_epoch=1",
        "run.threads=1",
    ]
    assert run_cli(_script("Compared Methods").main, argv) == 0
    run_dir = out / "runs" / "lr_cls_seed0"
    assert (run_dir / "metrics_val_lr.json").is_file() and not (run_dir / "metrics.json").exists()
    [result] = read_results(out / "results.csv")
    assert int(result["n_test"]) == 8  # the 8 validation images of --quick
    table = (out / "table.md").read_text()
    assert (
        "Val split, graded from the LR" in table
        and "LR val images" in table
        and "Test split" not in table
    )
    assert (
        run_cli(_script("Compared Methods").main, argv) == 0
    )  # tested already: collected, not retrained
    assert len(read_results(out / "results.csv")) == 1


def test_idrid_results_script_lists_its_rows(capsys):
    spec = importlib.util.spec_from_file_location(
        "idrid_results", Path(__file__).resolve().parents[1] / "scripts/idrid_results.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert run_cli(module.main, ["--list"]) == 0
    out = capsys.readouterr().out
    assert (
        "deepmt_dr_synth_init" in out
        and "train.init_from=synthetic train.init_synthetic_hr_size=128" in out
        and "hr_cls" in out
    )


def test_idrid_recipe_script_lists_its_rows(capsys):
    spec = importlib.util.spec_from_file_location("idrid_recipe", ROOT / "scripts/idrid_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert run_cli(module.main, ["--list"]) == 0
    out = capsys.readouterr().out
    # The stage list survives YAML (a bare "cls,joint" in a flow list would split into two items).
    assert (
        "--method deepmt_dr train.stage=cls,joint train.init_from=runs/idrid_isrseg/checkpoints/seg_best.pt"
        in out
    )
    assert out.count("train.init_from=synthetic train.init_synthetic_hr_size=128") == 2
    assert load_table(ROOT / "scripts" / "idrid_recipe.yaml").reference == "lr_cls"
