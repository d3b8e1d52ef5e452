"""`make demo` (run_scripts/demo.sh -> python -m demo): the quick demo end to end, the report's
numbers against the evaluation files, the comparison arithmetic, the method table, the tuning
rules and the tuning record."""
import math
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from demo import compare, evaluate, methods, report, runner, tuning
from demo.methods import DEFAULT_METHODS, FULL, METHODS, QUICK, TUNED_AT, Method

REPO = Path(__file__).resolve().parents[1]
METHOD_LABELS = {name: METHODS[name].label for name in DEFAULT_METHODS}


def quick_run(out, name):
    """Where the quick demo keeps one method's run: the study's layout (batch, seed, method)."""
    return out / "runs" / f"b{QUICK.batch_size}" / f"seed{QUICK.seed}" / name


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """The quick demo through the shell script, as `DEMO_QUICK=1 make demo` runs it.

    SigLIP goes first so that its checkpoints are loaded before anything else has registered
    the tiny model's config in the evaluating process.
    """
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "DEMO_QUICK": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", str(REPO / "run_scripts" / "demo.sh"), "--out", str(out),
                           "--methods", "siglip,openclip,fastclip-v3", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_the_same_seed_repeats_the_baseline_bit_for_bit(quick_demo, tmp_path):
    """OpenCLIP's run again from its own recorded command, at the same thread count: the same
    weights at every epoch, so the same numbers (the issue: a rerun changed OpenCLIP's)."""
    import torch

    out, _ = quick_demo
    first = json.loads((quick_run(out, "openclip") / "train.json").read_text())
    assert first["omp_num_threads"] == "1"   # one thread per trainer, two trainers at once
    command = list(first["command"])
    command[command.index("--logs") + 1] = str(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": first["omp_num_threads"]}
    runner.run_trainer(command, tmp_path / "openclip", "again", QUICK.epochs, 1,
                       show_progress=False, env=env)
    for epoch in range(1, QUICK.epochs + 1):
        weights = [torch.load(root / "openclip" / "checkpoints" / f"epoch_{epoch}.pt",
                              map_location="cpu", weights_only=True)["state_dict"]
                   for root in (quick_run(out, "openclip").parent, tmp_path)]
        assert weights[0].keys() == weights[1].keys()
        for key in weights[0]:
            assert torch.equal(weights[0][key], weights[1][key]), (epoch, key)


def test_the_study_reuses_the_demos_runs_as_its_seed(quick_demo):
    """`make demo` trains exactly as the study trains a seed, so `make demo-study` on the same
    directory keeps the demo's runs (not one is retrained) and summarises them."""
    from demo import study

    out, _ = quick_demo
    names = ["openclip", "fastclip-v3"]
    before = {n: (quick_run(out, n) / "train.json").stat().st_mtime_ns for n in names}
    study.run_study(out, QUICK, names, [QUICK.seed], jobs=1, show_progress=False)
    assert {n: (quick_run(out, n) / "train.json").stat().st_mtime_ns for n in names} == before
    record = json.loads((out / f"study_b{QUICK.batch_size}.json").read_text())
    # the summary also takes SigLIP's run, which is on disk beside them
    assert record["complete"] == {n: [QUICK.seed] for n in (*names, "siglip")}


def test_a_finished_run_is_reused_only_for_the_same_command(tmp_path):
    """Paths may move with the checkout; a changed flag, epoch count or thread count retrains."""
    from demo import study

    run_dir, settings = tmp_path / "openclip", replace(QUICK, epochs=1)
    (run_dir / "eval" / "epoch_1").mkdir(parents=True)
    (run_dir / "eval" / "epoch_1" / "demo_summary.json").write_text("{}")

    def command(root, lr="0.001"):
        return [f"{root}/python", "-m", "open_clip_train.main", "--train-data",
                f"{root}/data/{{0..1}}.tar", "--lr", lr, "--logs", f"{root}/runs"]

    def record(threads):
        (run_dir / "train.json").write_text(json.dumps(
            {"omp_num_threads": threads, "command": command("/a")}))

    record("1")
    assert study.reusable(run_dir, settings, command("/b"))
    assert not study.reusable(run_dir, settings, command("/a", lr="0.002"))
    assert not study.reusable(run_dir, replace(settings, epochs=2), command("/a"))
    record("2")
    assert not study.reusable(run_dir, settings, command("/a"))


def split_row(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table_rows(markdown, first_header):
    """{first cell: {column header: cell}} of the markdown table whose header starts with
    first_header."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = split_row(lines[start])
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = split_row(line)
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def eval_records(run_dir, epoch):
    """The evaluation output of one checkpoint, read directly (not through demo/)."""
    path = run_dir / "eval" / f"epoch_{epoch}" / "demo_results.jsonl"
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_quick_demo_writes_report_and_curves(quick_demo):
    out, stdout = quick_demo
    report = (out / "report.md").read_text()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for label in METHOD_LABELS.values():
        assert f"| {label} |" in report and f"| {label} |" in stdout
    assert "Attribution: Digit images" in report       # the quick demo uses the digits
    assert "Held-out retrieval mean R@1, FastCLIP-v3 / OpenCLIP" in report


def test_report_numbers_are_the_evaluation_output(quick_demo):
    out, _ = quick_demo
    final = table_rows((out / "report.md").read_text(), "method")
    for name, label in METHOD_LABELS.items():
        records = eval_records(quick_run(out, name), QUICK.epochs)
        for _, header, task, metric in evaluate.HELDOUT_COLUMNS:
            assert final[label][header] == f"{100 * records[task]['metrics'][metric]:.2f}", \
                (name, header)
        samples_seen = records["heldout_retrieval"]["info"]["samples_seen"]
        assert final[label]["samples seen"] == f"{samples_seen:,}"


def test_every_epoch_is_checkpointed_and_evaluated(quick_demo):
    out, _ = quick_demo
    per_epoch = table_rows((out / "report.md").read_text(), "epoch")
    assert sorted(map(int, per_epoch)) == list(range(1, QUICK.epochs + 1))
    for name in METHOD_LABELS:
        run_dir = quick_run(out, name)
        train = json.loads((run_dir / "train.json").read_text())
        # what the trainer logged it saw per epoch equals what the driver predicts
        assert train["samples_per_epoch"] == runner.expected_samples_per_epoch(
            QUICK.train_num_samples, QUICK.batch_size, QUICK.workers)
        for epoch in range(1, QUICK.epochs + 1):
            assert (run_dir / "checkpoints" / f"epoch_{epoch}.pt").is_file()
            retrieval = eval_records(run_dir, epoch)["heldout_retrieval"]
            assert retrieval["info"]["samples_seen"] == epoch * train["samples_per_epoch"]
            cell = per_epoch[str(epoch)][METHOD_LABELS[name]]
            assert cell == f"{100 * retrieval['metrics']['mean_recall@1']:.2f}"


def test_results_json_comparison_matches_the_points(quick_demo):
    out, _ = quick_demo
    results = json.loads((out / "results.json").read_text())
    base = results["runs"]["openclip"]["points"][-1]["mean_r1"]
    fast = results["runs"]["fastclip-v3"]["points"][-1]["mean_r1"]
    assert results["comparison"]["ratio_final"] == pytest.approx(fast / base)
    assert eval_records(quick_run(out, "openclip"), QUICK.epochs)[
        "heldout_retrieval"]["metrics"]["mean_recall@1"] == base


def points(values, per_epoch=100):
    return [{"epoch": e, "samples_seen": e * per_epoch, "mean_r1": v}
            for e, v in enumerate(values, start=1)]


def test_ratio_and_samples_to_reach():
    baseline = points([0.10, 0.20, 0.30, 0.40])
    challenger = points([0.15, 0.30, 0.45, 0.50])
    assert compare.ratio_at_equal_samples(challenger, baseline) == pytest.approx(
        {100: 1.5, 200: 1.5, 300: 1.5, 400: 1.25})
    figures = compare.comparison({"openclip": {"points": baseline},
                               "fastclip-v3": {"points": challenger}})
    assert figures["ratio_final"] == pytest.approx(1.25)
    assert figures["samples_to_reach"] == 300          # first checkpoint with R@1 >= 0.40
    assert figures["fraction_to_reach"] == pytest.approx(0.75)
    never = compare.comparison({"openclip": {"points": baseline},
                             "fastclip-v3": {"points": points([0.1, 0.1, 0.1, 0.39])}})
    assert never["samples_to_reach"] is None and never["fraction_to_reach"] is None


def test_expected_samples_per_epoch_rounds_to_whole_batches_per_worker():
    assert runner.expected_samples_per_epoch(2691, 32, 1) == 85 * 32
    assert runner.expected_samples_per_epoch(2691, 32, 2) == 86 * 32
    assert runner.expected_samples_per_epoch(320, 32, 0) == 320


def test_every_method_gets_the_same_tuning_effort():
    sizes = {name: len(methods.grid_points(m.grid)) for name, m in METHODS.items()}
    assert len(set(sizes.values())) == 1, sizes
    for name, method in METHODS.items():
        assert method.tuned in methods.grid_points(method.grid), name
        # the tuned keys are exactly the grid's; nothing tuned outside the record
        assert set(method.tuned) == set(method.grid) and not set(method.fixed) & set(method.grid)


def test_methods_share_everything_but_the_loss_flags():
    manifest = {"root": "/data", "train": {"pattern": "train/{0..3}.tar", "num_samples": 100,
                                           "id_space": 40000}}
    commands = {name: runner.trainer_command(FULL, manifest,
                                           methods.method_flags(name, m.tuned, 40000), "logs", name)
                for name, m in METHODS.items()}
    shared = {name: command[:command.index("--name")] for name, command in commands.items()}
    assert len({tuple(v) for v in shared.values()}) == 1
    assert "--siglip" in commands["siglip"] and "--fastclip" in commands["fastclip-v3"]
    v3 = commands["fastclip-v3"]
    assert v3[v3.index("--data-size") + 1] == "40000"


def test_every_hyperparameter_is_the_trainer_flag_of_its_name():
    """The method table is data: the patched trainer's own parser reads each method's command
    and every tuned, fixed and grid value lands in the argument of the same name."""
    from open_clip_train.params import parse_args

    manifest = {"root": "/data", "train": {"pattern": "train/{0..3}.tar", "num_samples": 100,
                                           "id_space": 40000}}
    for name, method in METHODS.items():
        for hyper in [method.tuned] + methods.grid_points(method.grid):
            command = runner.trainer_command(FULL, manifest,
                                             methods.method_flags(name, hyper, 40000), "logs",
                                             name)
            args = parse_args(command[command.index("open_clip_train.main") + 1:])
            for key, value in {**method.fixed, **hyper}.items():
                assert getattr(args, key) == value, (name, key)
            assert bool(getattr(args, "fastclip", False)) == method.per_sample_state, name
            assert bool(getattr(args, "siglip", False)) == ("--siglip" in method.loss_flags)
    with pytest.raises(ValueError, match="unknown method 'clip'"):
        methods.method_flags("clip", {}, 1)


def test_tuned_hyperparameters_are_the_records_best_over_the_whole_grid():
    """demo/tuning_record.jsonl at TUNED_AT (seeded shuffle) scores every grid point of every
    method (the demo's three and the study's v0, v1, v2); each method's tuned point is its best
    over every point the record scored for it (a grid that moved to bring its best inside keeps
    its old points in the record), and the tuned learning rate is interior to its grid."""
    full = json.loads(json.dumps(asdict(TUNED_AT)))
    entries = [e for e in tuning.read_record() if e["settings"] == full
               and e["shuffle"] == "seeded"]
    for name, method in METHODS.items():
        own = [e for e in entries if e["method"] == name and e["fixed"] == method.fixed]
        scored = {repr(e["hyper"]) for e in own}
        assert len(scored) == len(own), name   # one line per point
        assert {repr(h) for h in methods.grid_points(method.grid)} <= scored, name
        assert max(own, key=lambda e: e["val_mean_r1"])["hyper"] == method.tuned, name
        assert min(method.grid["lr"]) < method.tuned["lr"] < max(method.grid["lr"]), name


def test_report_shows_the_record_lines_of_its_settings_only():
    runs = {"openclip": {"label": "OpenCLIP", "hyper": dict(lr=1e-3, temperature=0.07)}}

    def entry(settings, lr, score, method="openclip"):
        return {"method": method, "hyper": dict(lr=lr, temperature=0.07), "fixed": {},
                "settings": asdict(settings), "shuffle": "seeded", "val_mean_r1": score}

    entries = [entry(TUNED_AT, 1e-3, 0.2075), entry(replace(TUNED_AT, seed=3), 5e-4, 0.1888),
               entry(replace(TUNED_AT, batch_size=32), 1e-3, 0.30),
               entry(TUNED_AT, 1e-3, 0.5, "siglip")]
    table, = report.tuning_lines(entries, replace(TUNED_AT, seed=1), runs)
    rows = [line for line in table.splitlines()[2:]]
    assert rows == ["| OpenCLIP | lr 0.001, temperature 0.07 | 20.75 | 0 | seeded | used |",
                    "| OpenCLIP | lr 0.0005, temperature 0.07 | 18.88 | 3 | seeded |  |"]
    none, = report.tuning_lines(entries, QUICK, runs)
    assert none.startswith("No line of the tuning record")


def test_tuning_scores_on_the_validation_split_only(tmp_path, monkeypatch):
    one_point = Method("OpenCLIP", tuned=dict(lr=1e-3, temperature=0.07),
                            grid=dict(lr=[1e-3], temperature=[0.07]))
    monkeypatch.setitem(METHODS, "openclip", one_point)
    path = tuning.run_tuning(tmp_path, QUICK, ["openclip"])
    result, = json.loads(path.read_text())["results"]
    run_dir = Path(result["run_dir"])
    records = eval_records(run_dir, QUICK.epochs)
    assert set(records) == {"val_retrieval"}
    assert result["val_mean_r1"] == records["val_retrieval"]["metrics"]["mean_recall@1"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"epoch_{QUICK.epochs}.pt"]


def test_tuning_keeps_scored_points_and_trains_only_new_ones(tmp_path, monkeypatch):
    first = Method("OpenCLIP", tuned=dict(lr=1e-3, temperature=0.07),
                        grid=dict(lr=[1e-3], temperature=[0.07]))
    monkeypatch.setitem(METHODS, "openclip", first)
    record = tmp_path / "record.jsonl"
    tuning.run_tuning(tmp_path, QUICK, ["openclip"], record=record)
    kept, = json.loads((tmp_path / "tuning" / "tuning.json").read_text())["results"]
    first_line, = tuning.read_record(record)
    checkpoint = Path(kept["run_dir"]) / "checkpoints" / f"epoch_{QUICK.epochs}.pt"
    written = checkpoint.stat().st_mtime_ns
    grown = Method("OpenCLIP", tuned=dict(lr=1e-3, temperature=0.07),
                        grid=dict(lr=[1e-3, 5e-4], temperature=[0.07]))
    monkeypatch.setitem(METHODS, "openclip", grown)
    results = json.loads(tuning.run_tuning(tmp_path, QUICK, ["openclip"],
                                           record=record).read_text())
    assert [r["hyper"]["lr"] for r in results["results"]] == [1e-3, 5e-4]
    assert results["results"][0] == kept and checkpoint.stat().st_mtime_ns == written
    # the record gained the new point only, with the score tuning.json holds
    lines = tuning.read_record(record)
    assert lines[0] == first_line and len(lines) == 2
    assert [(e["hyper"], e["val_mean_r1"]) for e in lines] == [
        (r["hyper"], r["val_mean_r1"]) for r in results["results"]]
    assert lines[1]["settings"] == json.loads(json.dumps(asdict(QUICK)))
    assert lines[1]["fixed"] == {} and lines[1]["shuffle"] == "seeded"
    # scoring a point again replaces its line instead of adding one
    assert len(tuning.extend_record(record, QUICK, [{**kept, "val_mean_r1": 0.5}])) == 2
    assert tuning.read_record(record)[0]["val_mean_r1"] == 0.5
    # other settings: nothing is reused
    other = tuning.previous_results(tmp_path / "tuning", replace(QUICK, epochs=3))
    assert other == []


def test_a_tuning_carries_on_from_its_record_in_a_fresh_directory(tmp_path, monkeypatch):
    """A fresh checkout has no tuning.json: the record's points at the same settings are kept,
    only the grid's other points train, and a record line at other settings is not reused."""
    grid = Method("OpenCLIP", tuned=dict(lr=1e-3, temperature=0.07),
                  grid=dict(lr=[1e-3, 5e-4], temperature=[0.07]))
    monkeypatch.setitem(METHODS, "openclip", grid)
    record = tmp_path / "record.jsonl"
    tuning.extend_record(record, QUICK, [{"method": "openclip", "val_mean_r1": 0.25,
                                          "hyper": dict(lr=1e-3, temperature=0.07)}])
    tuning.extend_record(record, replace(QUICK, epochs=3), [
        {"method": "openclip", "val_mean_r1": 0.75, "hyper": dict(lr=5e-4, temperature=0.07)}])
    results = json.loads(tuning.run_tuning(tmp_path / "fresh", QUICK, ["openclip"],
                                           record=record).read_text())["results"]
    assert [(r["hyper"]["lr"], r.get("from_record", False)) for r in results] == [
        (1e-3, True), (5e-4, False)]
    assert results[0]["val_mean_r1"] == 0.25 and results[1]["val_mean_r1"] != 0.75
    trained = sorted(p.name for p in (tmp_path / "fresh" / "tuning").iterdir() if p.is_dir())
    assert trained == [tuning.tuning_run_name("openclip", dict(lr=5e-4, temperature=0.07))]
    assert len(tuning.read_record(record)) == 3


def test_majority_class_share_is_the_most_frequent_label():
    assert evaluate.majority_class_share([(None, 2), (None, 2), (None, 0), (None, 2)]) == 0.75


def test_study_and_batch_curve_drivers_on_the_quick_path(tmp_path):
    """Two seeds x two methods, then the batch curve at 16 and 32 (the batch-16 runs are
    reused): mean ± CI and the paired figures come from the runs' evaluation files."""
    from demo import stats, study

    names, seeds = ["openclip", "fastclip-v3"], [0, 1]
    tiny = replace(QUICK, epochs=1, train_num_samples=64)
    path = study.run_study(tmp_path, tiny, names, seeds, jobs=2, show_progress=False)
    record = json.loads((tmp_path / "study_b16.json").read_text())
    assert path.name == "study_b16.md" and record["complete"] == {n: seeds for n in names}
    finals = {name: [eval_records(study.run_dir_of(tmp_path, replace(tiny, seed=s), s, name),
                                  tiny.epochs)["heldout_retrieval"]["metrics"]["mean_recall@1"]
                     for s in seeds] for name in names}
    for name in names:
        expected = stats.mean_ci(finals[name])
        assert record["finals"][name]["mean_r1"]["mean"] == pytest.approx(expected.mean)
        assert record["finals"][name]["mean_r1"]["half_width"] == pytest.approx(
            expected.half_width)
    paired = record["paired"]["fastclip-v3"]["mean_r1"]
    assert paired["ratios"] == pytest.approx(
        [f / b if b else math.inf for f, b in zip(finals["fastclip-v3"], finals["openclip"])])
    for name in names:   # one thread per trainer, as the docstring says
        train = json.loads((study.run_dir_of(tmp_path, tiny, 0, name) / "train.json").read_text())
        assert train["omp_num_threads"] == "1"
    first = (study.run_dir_of(tmp_path, tiny, 0, "openclip") / "train.json").stat().st_mtime_ns
    curve = study.run_batch_curve(tmp_path, tiny, names, [0], batches=(16, 32), jobs=2,
                                  show_progress=False)
    rows = json.loads((tmp_path / "batch_curve.json").read_text())
    assert [row["batch"] for row in rows] == [16, 32] and curve.name == "batch_curve.md"
    assert (study.run_dir_of(tmp_path, tiny, 0, "openclip") / "train.json").stat().st_mtime_ns \
        == first   # reused, not retrained
    assert (tmp_path / "study_curves_b32.png").is_file()
    study.run_study(tmp_path, tiny, ["fastclip-v3"], [0], show_progress=False)
    record = json.loads((tmp_path / "study_b16.json").read_text())
    assert record["complete"] == {n: seeds for n in names}   # a narrower rerun never shrinks it


def test_a_recorded_study_carries_on_from_a_fresh_directory(tmp_path):
    """`python -m demo keep` records a finished run's small files; a study in a fresh directory
    restores it instead of training (no checkpoint appears) and summarises the same numbers; a
    changed setting is not restored but trained."""
    from demo import study, study_record

    names, tiny = ["openclip"], replace(QUICK, epochs=1, train_num_samples=64)
    first, record, fresh = tmp_path / "first", tmp_path / "record", tmp_path / "fresh"
    study.run_study(first, tiny, names, [0], show_progress=False, record_dir=None)
    kept = study_record.keep(first, record)
    assert [p.relative_to(record) for p in kept] == [Path("runs/b16/seed0/openclip")]
    assert not list(record.rglob("*.pt")) and (record / "study_b16.json").is_file()
    study.run_study(fresh, tiny, names, [0], show_progress=False, record_dir=record)
    assert not (study.run_dir_of(fresh, tiny, 0, "openclip") / "checkpoints").exists()
    summary = [json.loads((root / "study_b16.json").read_text())["finals"]
               for root in (first, fresh)]
    assert summary[0] == summary[1] and "openclip" in summary[0]
    warmer = replace(tiny, warmup_steps=tiny.warmup_steps + 1)
    study.run_study(fresh, warmer, names, [0], show_progress=False, record_dir=record)
    assert (study.run_dir_of(fresh, warmer, 0, "openclip") / "checkpoints" / "epoch_1.pt").is_file()
