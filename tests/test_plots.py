"""What the run's figures and tables show (issue 34): no panel with a lone point, the Go-labels panel only
where domain labels can change, confusion matrices named by the evaluated folder and never overwritten,
results.csv, the target mosaic. Runs are small fake run directories, as `adapt` writes them."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from golabels_cli import figures, results
from golabels_cli.inference import EvalResult
from golabels_cli.figures import confusion_name, write_confusion_figures, write_target_mosaic
from golabels_cli.report import load_run
from golabels_cli.results import PLOTS, report_panels, results_panels, write_plots, write_results_csv, write_results_figure

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "runs-8a82bdc" / "finished"


def fake_run(run: Path, mode="go", iters=(10, 20, 30, 40), evals_at=(20, 40), eval_dir=True, finished=True, extra_evals=()):
    """A run directory as adapt leaves it: config.yaml (keys spelled as options), metrics.jsonl with
    the validators in the evaluated rows, summary.json with the evals and the selected snapshot."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"source": "s", "target": "t", "method": "cdan-e", "domain-labels": mode,
                                                     "iters": iters[-1] if iters else 0}))
    rows, evals = [], []
    for it in iters:
        row = {"iter": it, "loss_cls": 1 / it, "loss_adv": 0.69, "loss_extra": None, "loss_target": None, "disc_acc": 0.5 + it / 200,
               "disc_acc_src": 0.6, "disc_acc_tgt": 0.4, "relabeled_src": 0.0 if mode == "fixed" else 0.1,
               "relabeled_tgt": 0.0 if mode == "fixed" else 0.2, "adv_grad_norm": 0.5, "lr": 0.01, "lambda": 0.5}
        if it in evals_at:
            scores = {"src_acc": None, "entropy": 1 - it / 100, "im": it / 100, "snd": 2 + it / 100, "dev": None,
                      "target_prior": [0.5, 0.5], "predicted_share": [0.4, 0.6], **({"target_acc": 0.5 + it / 200} if eval_dir else {})}
            row.update(scores)
            evals.append({"iter": it, **scores})
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        evals += list(extra_evals)
        selected = {"by": "im", "iter": evals_at[-1]} if evals_at else None
        (run / "summary.json").write_text(json.dumps({"evals": evals, "selected": selected}))
    return load_run(run)


def confusion_result(classes=("cat", "dog", "fox"), true=None, seed=0):
    """An EvalResult with a mostly diagonal confusion matrix (rows: `true`, columns: `classes`)."""
    import random

    rng = random.Random(seed)
    true = list(true or classes)
    matrix = [[0] * len(classes) for _ in true]
    for i, name in enumerate(true):
        matrix[i][classes.index(name)] = rng.randint(5, 50)
        matrix[i][rng.randrange(len(classes))] += rng.randint(0, 5)
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][classes.index(name)] for i, name in enumerate(true))
    return EvalResult(total, correct / total, correct / total, [], matrix, true, list(classes), 0)


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


# ---- which panels -----------------------------------------------------------------------------------


def test_panels_with_fewer_than_two_points_are_left_out(tmp_path):
    # Two logged rows, one evaluated snapshot: curves for the losses and the discriminator, no validator.
    record = fake_run(tmp_path / "one-eval", iters=(10, 20), evals_at=(20,))
    assert results_panels(record) == ["losses", "discriminator", "relabeled"]
    shown = {p.name: p for p in results.panels(record)}
    # series without 2 points (loss_extra and loss_target are None throughout) are not in the legend either
    assert [label for label, _ in shown["losses"].series] == ["classification (source)", "adversarial (discriminator BCE)"]
    assert all(len(points) >= 2 for p in shown.values() for _, points in p.series)
    # one logged row: nothing has 2 points, so no panel at all
    assert results_panels(fake_run(tmp_path / "one-row", iters=(10,), evals_at=(10,))) == []
    # a series with a single point among longer ones is dropped alone
    record = fake_run(tmp_path / "partial", iters=(10, 20, 30), evals_at=(10, 20, 30))
    for row in record.rows[1:]:
        row["disc_acc_src"] = None
    assert [label for label, _ in {p.name: p for p in results.panels(record)}["discriminator"].series] == ["all", "target"]


def test_validator_panels_follow_the_evaluated_snapshots(tmp_path):
    record = fake_run(tmp_path / "run", iters=(10, 20, 30, 40), evals_at=(20, 40))
    assert results_panels(record) == ["losses", "discriminator", "relabeled", "entropy", "im", "snd", "target_acc"]
    # src_acc and dev are None in every snapshot; without --eval-dir no oracle panel
    no_labels = fake_run(tmp_path / "no-eval-dir", evals_at=(20, 40), eval_dir=False)
    assert results_panels(no_labels)[-3:] == ["entropy", "im", "snd"]
    # an interrupted run (no summary.json) reads its snapshots from metrics.jsonl
    assert results_panels(fake_run(tmp_path / "interrupted", finished=False)) == results_panels(record)
    # the shipped fixture: fixed domain labels, 4 rows, 2 snapshots without labels
    assert results_panels(load_run(FIXTURE_RUN)) == ["losses", "discriminator", "entropy", "im", "snd"]


def test_go_panel_only_where_domain_labels_can_change(tmp_path):
    fixed = fake_run(tmp_path / "fixed", mode="fixed")
    assert "relabeled" not in results_panels(fixed)
    assert report_panels(fixed)[PLOTS[1]] == ["discriminator", "adv_grad_norm"]
    go = fake_run(tmp_path / "go", mode="go")
    assert "relabeled" in results_panels(go)
    assert report_panels(go)[PLOTS[1]] == ["discriminator", "relabeled", "adv_grad_norm"]
    assert "relabeled" in results_panels(fake_run(tmp_path / "soft", mode="soft"))
    # under go too, one point is no curve
    assert "relabeled" not in results_panels(fake_run(tmp_path / "go-one", mode="go", iters=(10,), evals_at=()))


def test_report_files_hold_only_panels_with_curves(tmp_path):
    record = fake_run(tmp_path / "no-evals", iters=(10, 20, 30), evals_at=())
    assert list(report_panels(record)) == [PLOTS[0], PLOTS[1]]
    assert report_panels(fake_run(tmp_path / "one-row", iters=(10,), evals_at=(10,))) == {}


# ---- the PNGs --------------------------------------------------------------------------------------


def test_results_figure_and_report_plots_are_valid_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    record = fake_run(tmp_path / "run", iters=(10, 20, 30, 40, 50, 60), evals_at=(20, 40, 60))
    path = write_results_figure(record)
    assert path == record.run_dir / "results.png"
    width, height = png_size(path)
    assert width > height > 300  # two rows of four panels
    written = write_plots(record)
    assert [p.name for p in written] == list(PLOTS)
    for p in written:
        png_size(p)
    assert not list(record.run_dir.glob(".*.tmp"))


def test_nothing_to_draw_writes_no_png(tmp_path):
    pytest.importorskip("matplotlib")
    record = fake_run(tmp_path / "one-row", iters=(10,), evals_at=(10,))
    assert write_results_figure(record) is None
    assert write_plots(record) == []
    no_evals = fake_run(tmp_path / "no-evals", iters=(10, 20), evals_at=())
    assert [p.name for p in write_plots(no_evals)] == [PLOTS[0], PLOTS[1]]
    assert not (no_evals.run_dir / PLOTS[2]).exists()
    assert not list(record.run_dir.glob("*.png"))


# ---- confusion matrices ------------------------------------------------------------------------------


def test_confusion_figures_are_named_by_the_folder_and_never_overwritten(tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "run"
    folder.mkdir()
    data_dir = tmp_path / "office 31" / "amazon (test)"
    data_dir.mkdir(parents=True)
    result = confusion_result()
    first = write_confusion_figures(result, folder, str(data_dir), "run on amazon")
    assert [p.name for p in first] == ["confusion-amazon__test_.png", "confusion-amazon__test_-counts.png"]
    before = [p.read_bytes() for p in first]
    second = write_confusion_figures(result, folder, str(data_dir) + "/", "run on amazon")
    assert [p.name for p in second] == ["confusion-amazon__test_-2.png", "confusion-amazon__test_-2-counts.png"]
    assert [p.read_bytes() for p in first] == before
    # a name is free only if both files of the pair are: a lone leftover counts file skips its number
    (folder / "confusion-amazon__test_-3-counts.png").write_bytes(b"someone else's")
    third = write_confusion_figures(result, folder, data_dir, "run on amazon")
    assert [p.name for p in third] == ["confusion-amazon__test_-4.png", "confusion-amazon__test_-4-counts.png"]
    assert (folder / "confusion-amazon__test_-3-counts.png").read_bytes() == b"someone else's"
    assert not (folder / "confusion-amazon__test_-3.png").exists()
    for path in [*first, *second, *third]:
        png_size(path)
    assert not list(folder.glob(".*.tmp"))


def test_confusion_pair_moves_on_when_another_eval_takes_a_name_meanwhile(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "run"
    folder.mkdir()
    real = figures.atomic_path
    rival = folder / "confusion-target-counts.png"

    def racing(path, replace=True):
        # another evaluation links its counts file just after this one linked the normalized file
        if Path(path) == rival and not rival.exists():
            rival.write_bytes(b"the other eval's")
        return real(path, replace)

    monkeypatch.setattr(figures, "atomic_path", racing)
    written = write_confusion_figures(confusion_result(), folder, tmp_path / "target", "t")
    assert [p.name for p in written] == ["confusion-target-2.png", "confusion-target-2-counts.png"]
    # the normalized file linked at the taken number was this eval's own, and is gone with it
    assert not (folder / "confusion-target.png").exists() and rival.read_bytes() == b"the other eval's"


def test_confusion_figures_of_large_and_partial_label_sets(tmp_path):
    pytest.importorskip("matplotlib")
    classes = [f"class_{i:02d}" for i in range(45)]  # beyond 40 classes: no text in the cells
    written = write_confusion_figures(confusion_result(classes), tmp_path, tmp_path / "big", "45 classes")
    assert all(png_size(p)[0] > 1000 for p in written)
    # a folder holding 2 of the model's 5 classes: 2 rows, 5 columns
    partial = confusion_result(["a", "b", "c", "d", "e"], true=["b", "d"])
    width, height = png_size(write_confusion_figures(partial, tmp_path, tmp_path / "part", "subset")[0])
    assert width > height
    assert confusion_name("/") == "data"


# ---- results.csv -----------------------------------------------------------------------------------


def test_results_csv_holds_every_row_and_merges_the_evaluations(tmp_path):
    odd = 'odd,key "quoted"\nline'
    late = {"iter": 45, "entropy": 0.1, odd: 1.5, "target_prior": [1.0]}  # a snapshot with no metrics row of its own
    record = fake_run(tmp_path / "run", iters=(10, 20, 30, 40), evals_at=(20, 40), extra_evals=[late])
    record.summary["evals"][0]["target_mean_class_acc"] = 0.61  # in summary.json only: merged into iteration 20's row
    path = write_results_csv(record)
    assert path == record.run_dir / "results.csv"
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    assert columns[:5] == ["iter", "loss_cls", "loss_adv", "loss_extra", "loss_target"]
    assert columns[-2:] == ["target_mean_class_acc", odd]
    assert {"snd", "target_acc", "adv_grad_norm"} <= set(columns)
    assert "target_prior" not in columns and "predicted_share" not in columns  # lists left out
    assert [r["iter"] for r in rows] == ["10", "20", "30", "40", "45"]
    assert rows[0]["snd"] == "" and rows[0]["loss_extra"] == ""
    assert float(rows[1]["snd"]) == pytest.approx(2.2) and rows[1]["target_mean_class_acc"] == "0.61"
    assert rows[4][odd] == "1.5" and rows[4]["loss_cls"] == ""
    assert not list(record.run_dir.glob(".*.tmp"))
    # rewritten in place as the run grows
    assert write_results_csv(record) == path


def test_results_csv_of_a_run_without_rows(tmp_path):
    record = fake_run(tmp_path / "empty", iters=(), evals_at=(), finished=False)
    assert write_results_csv(record).read_text() == "iter\n"


# ---- target mosaic ---------------------------------------------------------------------------------


def test_target_mosaic_shows_at_most_sixteen_images(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    items = [(Image.new("L" if i % 3 else "RGB", (40 + 7 * i, 32 + 3 * i), 120), f"class {i}", 0.5 + i / 50) for i in range(20)]
    path = write_target_mosaic(items, tmp_path / "target-predictions.png", "target: 16 of 20 images")
    assert path == tmp_path / "target-predictions.png"
    width, height = png_size(path)
    assert height > 600 and width > 600
    small = write_target_mosaic(items[:3], tmp_path / "three.png", "3 images")
    assert png_size(small)[0] > png_size(small)[1]  # one row of three
    assert write_target_mosaic([], tmp_path / "none.png", "nothing") is None and not (tmp_path / "none.png").exists()


def test_without_matplotlib_figures_are_none_and_results_csv_still_written(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "pyplot", lambda: None)
    monkeypatch.setattr(figures, "pyplot", lambda: None)
    record = fake_run(tmp_path / "run")
    assert write_results_figure(record) is None and write_plots(record) is None
    assert write_confusion_figures(confusion_result(), tmp_path, tmp_path / "target", "t") is None
    assert write_target_mosaic([(None, "a", 1.0)], tmp_path / "m.png", "t") is None
    assert write_results_csv(record).is_file()
    assert not list(tmp_path.glob("*.png")) and not list(record.run_dir.glob("*.png"))


@pytest.mark.parametrize("iters", [10, 1000, 100000])
def test_no_tick_labels_overlap_at_any_run_length(tmp_path, iters):
    """Issue 45 item 6: results.png and the report's PNGs, laid out as written, for runs of 10,
    1000 and 100000 iterations: on every axis no two tick labels' boxes meet."""
    pytest.importorskip("matplotlib")
    step = max(1, iters // 500)
    record = fake_run(tmp_path / "run", iters=tuple(range(step, iters + 1, step)), evals_at=tuple(range(iters // 10 or 1, iters + 1,
                                                                                                        iters // 10 or 1)))
    plt = results.pyplot()
    figures = [("results.png", results.results_figure(plt, record)), *results.report_figures(plt, record)]
    assert len(figures) >= 3  # results.png and at least two report PNGs
    for name, fig in figures:
        fig.set_dpi(110)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            if not ax.axison:
                continue
            for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
                boxes = sorted((t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()),
                               key=lambda b: (b.x0, b.y0))
                for a, b in zip(boxes, boxes[1:]):
                    assert not a.overlaps(b), (name, ax.get_title(), [t.get_text() for t in labels])
        plt.close(fig)
    assert results.iteration_label(100000) == "100k" and results.iteration_label(2500) == "2.5k" and results.iteration_label(800) == "800"


def test_the_mosaic_shows_every_predicted_class_and_the_models_doubts():
    """Issue 45 item 6: not the first 16 images by name (16 frames of one class on a camera-style
    folder): the least confident first, then each predicted class in turn."""
    from golabels_cli.training.outputs import mosaic_choice

    predicted = [0] * 50 + [1] * 10 + [2] * 4  # a folder dominated by class 0
    confidence = [0.99 - j / 1000 for j in range(64)]
    confidence[55], confidence[3] = 0.2, 0.3  # two doubts
    chosen = mosaic_choice(predicted, confidence, 16)
    assert len(chosen) == len(set(chosen)) == 16
    assert chosen[:2] == [55, 3]  # the least confident lead
    assert {predicted[j] for j in chosen} == {0, 1, 2}
    assert sum(predicted[j] == 2 for j in chosen) == 4 and sum(predicted[j] == 0 for j in chosen) <= 7
    assert mosaic_choice([0, 1], [0.9, 0.8], 16) == [1, 0]  # fewer images than places: all of them
