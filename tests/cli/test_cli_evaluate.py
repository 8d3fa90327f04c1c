"""`biounet evaluate` in-process on real ISBI slices and on synthetic files."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from biounet.cli import main


@pytest.mark.data
def test_evaluate_ground_truth_against_itself(data_root, tmp_path, capsys):
    gt = tmp_path / "gt"
    (gt / "images").mkdir(parents=True)
    (gt / "labels").mkdir()
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in ("20", "21"):
        for kind in ("images", "labels"):
            (gt / kind / f"{name}.png").write_bytes((data_root / "isbi2012" / "train" / kind / f"{name}.png").read_bytes())
        labels = np.asarray(Image.open(data_root / "isbi2012" / "train" / "labels" / f"{name}.png"))
        tifffile.imwrite(pred / f"{name}_probability.tif", (labels / 255.0).astype(np.float32))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "isbi", "--out", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "rand_error" in table
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["overall"]["rand_error"] == 0 and report["overall"]["warping_error"] == 0
    assert (tmp_path / "r.csv").read_text().startswith("image,pixel_error")


def test_missing_predictions_are_named(tmp_path, capsys):
    gt = tmp_path / "gt"
    (gt / "images").mkdir(parents=True)
    (gt / "labels").mkdir()
    labels = np.zeros((20, 20), np.uint8)
    labels[5:10, 5:10] = 255
    for name in ("a", "b"):
        Image.fromarray(labels).save(gt / "images" / f"{name}.png")
        Image.fromarray(labels).save(gt / "labels" / f"{name}.png")
    pred = tmp_path / "pred"
    pred.mkdir()
    tifffile.imwrite(pred / "a_labels.tif", (labels > 0).astype(np.uint16))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    error = capsys.readouterr().err
    assert "no prediction for 1 ground-truth image(s): b" in error
    tifffile.imwrite(pred / "b.tif", (labels > 0).astype(np.uint16))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "ctc,instance"]) == 0
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(gt)]) == 2
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(pred), "--gt", str(pred / "b.tif")]) == 2
    error = capsys.readouterr().err.strip()
    assert "--gt must be a data set folder" in error and "labels_path" not in error
    assert len(error.splitlines()) == 1


def ground_truth_folder(tmp_path, labels):
    """Write image a and its labels as a pairs data set; return it and an empty --pred."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    (gt / "images").mkdir(parents=True)
    (gt / "labels").mkdir()
    pred.mkdir()
    Image.fromarray(labels.astype(np.uint8)).save(gt / "images" / "a.png")
    tifffile.imwrite(gt / "labels" / "a.tif", labels)
    return gt, pred


def test_post_processing_flags_shape_the_objects_of_probability_maps(tmp_path):
    from biounet.evaluation import evaluate
    from biounet.postprocess import PostprocessConfig

    labels = np.zeros((30, 30), np.uint16)
    labels[4:14, 4:14], labels[17:20, 17:20] = 1, 2  # object 2 has 9 pixels
    gt, pred = ground_truth_folder(tmp_path, labels)
    probability = np.where(labels > 0, 0.65, 0.1).astype(np.float32)
    tifffile.imwrite(pred / "a_probability.tif", probability)
    for flags, config in (
        ([], PostprocessConfig()),
        (["--min-size", "4"], PostprocessConfig(min_size=4)),
        (["--threshold", "0.7"], PostprocessConfig(threshold=0.7)),
        (["--seed-prominence", "3"], PostprocessConfig(min_seed_prominence_px=3.0)),
        (["--distance-sigma", "0"], PostprocessConfig(distance_sigma_px=0.0)),
    ):
        out = tmp_path / f"r{len(flags)}{''.join(flags)}.json"
        assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "instance", "--out", str(out), *flags]) == 0
        expected = evaluate([("a", labels, probability)], metrics="instance", postprocess=config)
        assert json.loads(out.read_text())["overall"] == pytest.approx(expected.overall)
    recalls = [json.loads((tmp_path / name).read_text())["overall"]["recall_50"] for name in ("r0.json", "r2--min-size4.json", "r2--threshold0.7.json")]
    assert recalls == [0.5, 1.0, 0.0]  # the flags did change the objects

    out = tmp_path / "spacing.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "instance", "--out", str(out), "--spacing", "1", "2"]) == 0
    expected = evaluate([("a", labels, probability)], metrics="instance", postprocess=PostprocessConfig(spacing=(1.0, 2.0)))
    assert json.loads(out.read_text())["overall"] == pytest.approx(expected.overall)


def test_spacing_reaches_the_objects_evaluate_scores(tmp_path):
    # Two discs of radius 10 px on rows 4 px apart, stacked 4 rows: one object in pixels.
    y, x = np.mgrid[0:16, 0:40].astype(float)
    labels = np.zeros(y.shape, np.uint16)
    for cell, centre in enumerate((5.5, 9.5), start=1):
        labels[(((y - centre) * 4) ** 2 + (x - 20) ** 2 <= 100) & (labels == 0)] = cell
    gt, pred = ground_truth_folder(tmp_path, labels)
    tifffile.imwrite(pred / "a_probability.tif", np.where(labels > 0, 0.9, 0.1).astype(np.float32))
    recalls = {}
    for flags in ([], ["--spacing", "4", "1"]):
        out = tmp_path / f"r{len(flags)}.json"
        assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "instance", "--out", str(out), *flags]) == 0
        recalls[len(flags)] = json.loads(out.read_text())["overall"]["recall_50"]
    assert recalls == {0: 0.5, 3: 1.0}


def one_square_folders(tmp_path):
    """Ground truth with one 10 x 10 object, and its probability map (0.9 inside)."""
    labels = np.zeros((30, 30), np.uint16)
    labels[4:14, 4:14] = 1
    gt, pred = ground_truth_folder(tmp_path, labels)
    tifffile.imwrite(pred / "a_probability.tif", np.where(labels > 0, 0.9, 0.1).astype(np.float32))
    return gt, pred


def test_spacing_needs_one_value_per_axis_of_what_is_scored(tmp_path, capsys):
    gt, pred = one_square_folders(tmp_path)
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "instance"]
    assert main([*args, "--spacing", "4", "1", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "biounet evaluate: error: --spacing needs 2 values: without --volume maps are scored as (Y, X) planes; "
        "got [4.0, 1.0, 1.0]")
    assert main([*args, "--volume", "--spacing", "4", "1"]) == 2
    assert "--spacing needs 3 values: --volume scores (Z, Y, X) volumes; got [4.0, 1.0]" in capsys.readouterr().err


def test_instance_metrics_take_the_instances_file_and_isbi_the_map(tmp_path):
    from biounet.evaluation import evaluate

    labels = np.zeros((30, 30), np.uint16)
    labels[4:14, 4:14], labels[4:14, 14:24] = 1, 2  # touching: one object in the map
    gt, pred = ground_truth_folder(tmp_path, labels)
    probability = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    tifffile.imwrite(pred / "a_probability.tif", probability)
    tifffile.imwrite(pred / "a_instances.tif", labels)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    map_report = evaluate([("a", labels, probability)], metrics="isbi").overall
    assert {key: report["overall"][key] for key in map_report} == pytest.approx(map_report)
    assert report["overall"]["ap_50"] == 1.0 and report["overall"]["seg"] == 1.0
    assert report["images"][0]["image"] == "a" and "rand_error" in report["images"][0] and "ap_50" in report["images"][0]
    (pred / "a_instances.tif").unlink()
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "instance", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["overall"]["ap_50"] < 1.0  # the map's objects instead


def test_an_undefined_metric_is_written_as_null(tmp_path):
    gt, pred = ground_truth_folder(tmp_path, np.zeros((20, 20), np.uint16))  # no objects: SEG undefined
    tifffile.imwrite(pred / "a_instances.tif", np.zeros((20, 20), np.uint16))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "ctc", "--out", str(out)]) == 0
    assert "NaN" not in out.read_text()
    assert json.loads(out.read_text())["overall"]["seg"] is None


def test_flags_without_a_map_warn_and_objects_only_need_object_metrics(tmp_path, capsys):
    labels = np.zeros((20, 20), np.uint16)
    labels[3:9, 3:9] = 1
    gt, pred = ground_truth_folder(tmp_path, labels)
    tifffile.imwrite(pred / "a_instances.tif", labels)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    error = capsys.readouterr().err
    assert "the ISBI errors need probability maps" in error and "--metrics ctc,instance" in error
    assert len(error.strip().splitlines()) == 1
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "ctc,instance", "--threshold", "0.9"]) == 0
    assert "--threshold had no effect" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "ctc,instance"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_evaluate_offers_no_interior_seeds(tmp_path, capsys):
    labels = np.zeros((20, 20), np.uint16)
    labels[3:9, 3:9] = 1
    gt, pred = ground_truth_folder(tmp_path, labels)
    tifffile.imwrite(pred / "a_probability.tif", (labels > 0).astype(np.float32))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--seeds", "interior"])
    assert exit_info.value.code == 2 and "invalid choice: 'interior'" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "instance", "--seeds", "probability", "--threshold", "0.5"]) == 0


def test_close_boundaries_changes_the_isbi_maps_only(tmp_path, capsys):
    from biounet.boundaries import close_boundaries
    from biounet.evaluation import evaluate
    from biounet.postprocess import PostprocessConfig

    labels = np.zeros((30, 31), np.uint16)
    labels[:, :15], labels[:, 16:] = 1, 2  # two cells, a membrane of one pixel between
    gt, pred = ground_truth_folder(tmp_path, labels)
    probability = np.full(labels.shape, 0.95, np.float32)
    probability[:, 13:18] = 0.05  # predicted five pixels wide,
    probability[10:14, 13:18] = 0.4  # faint over four rows: the cells merge below 0.4
    tifffile.imwrite(pred / "a_probability.tif", probability)
    out = tmp_path / "r.json"
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--overwrite"]
    assert main([*args, "--close-boundaries", "--threshold", "0.3"]) == 0
    closed = json.loads(out.read_text())["overall"]
    expected = evaluate([("a", labels, close_boundaries(probability))], metrics="isbi").overall
    assert {key: closed[key] for key in expected} == pytest.approx(expected)
    # the objects come from the map as read: at 0.3 its two cells are one object
    postprocess = PostprocessConfig(threshold=0.3)
    instances = evaluate([("a", labels, probability)], metrics="ctc,instance", postprocess=postprocess).overall
    from_closed = evaluate([("a", labels, close_boundaries(probability))], metrics="ctc,instance", postprocess=postprocess).overall
    assert instances["seg"] != from_closed["seg"]
    assert {key: closed[key] for key in instances} == pytest.approx(instances)
    assert main(args) == 0
    raw = json.loads(out.read_text())["overall"]
    assert raw["rand_error"] > closed["rand_error"]
    assert main([*args, "--metrics", "instance", "--close-boundaries"]) == 2
    assert "--close-boundaries changes the maps the ISBI errors score" in capsys.readouterr().err
    tifffile.imwrite(pred / "a_probability.tif", (labels > 0).astype(np.uint8))
    assert main([*args, "--metrics", "isbi", "--close-boundaries"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--close-boundaries needs probability maps (float), got uint8" in error
    assert len(error.splitlines()) == 1
    tifffile.imwrite(pred / "a_probability.tif", np.full(labels.shape, 2.0, np.float32))
    assert main([*args, "--metrics", "isbi", "--close-boundaries"]) == 2
    error = capsys.readouterr().err.strip()
    assert "a_probability.tif is a float map with values in [2, 2]" in error


def test_distance_seed_flags_are_checked(tmp_path, capsys):
    gt, pred = one_square_folders(tmp_path)
    common = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "instance"]
    for flags, message in (
        (["--seed-prominence", "0"], "--seed-prominence must be > 0 (px), got 0.0"),
        (["--distance-sigma", "-1"], "--distance-sigma must be >= 0 (px), got -1.0"),
        (["--seed-prominence", "2", "--no-watershed"],
         "--seed-prominence selects the distance seeds of the watershed; this run uses --no-watershed"),
        (["--distance-sigma", "2", "--seeds", "probability"],
         "--distance-sigma smooths the distance seeds of the watershed; this run uses probability seeds"),
    ):
        assert main([*common, *flags]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error


def test_a_volume_map_is_cut_in_the_voxel_size_its_file_states(tmp_path):
    # two discs, 2 sections thick, touching in the plane: in cubic voxels the distance to
    # the Z faces flattens the seeds into one; in 8 x 1 x 1 voxels they are two, as
    # `predict --instances` cuts the same map of a calibrated input
    from biounet.data.calibration import Calibration
    from biounet.data.io import write_tiff

    z, y, x = np.mgrid[0:4, 0:40, 0:56]
    labels = np.zeros(z.shape, np.uint16)
    for cell, centre in enumerate((17, 29), start=1):
        labels[((y - 20) ** 2 + (x - centre) ** 2 <= 64) & (z >= 1) & (z <= 2) & (labels == 0)] = cell
    gt = tmp_path / "gt"
    gt.mkdir()
    tifffile.imwrite(gt / "cells-volume.tif", (labels > 0).astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(gt / "cells-labels.tif", labels, photometric="minisblack")
    probability = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    probability[1, 2:4, 2:4] = 0.9  # a speck below --min-size: no object, but map foreground
    calibrated = Calibration(resolution=(200.0, 200.0), resolution_unit=1, unit="um", spacing=0.04)
    counts = {}
    for name, calibration, flags in [
        ("calibrated", calibrated, []),
        ("plain", None, []),
        ("overridden", calibrated, ["--spacing", "1", "1", "1"]),
    ]:
        pred = tmp_path / name
        write_tiff(pred / "cells-volume_probability.tif", probability, calibration=calibration)
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--volume", "--metrics",
                     "instance", "--out", str(out), *flags]) == 0
        counts[name] = json.loads(out.read_text())["images"][0]["n_pred"]
    assert counts == {"calibrated": 2, "plain": 1, "overridden": 1}
    # the ISBI errors score the map itself, whatever voxel size cuts its objects
    isbi = {}
    for name in ("calibrated", "plain"):
        out = tmp_path / f"{name}-all.json"
        assert main(["evaluate", "--pred", str(tmp_path / name), "--gt", str(gt), "--volume",
                     "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        isbi[name] = {key: report["overall"][key] for key in ("pixel_error", "rand_error")}
        assert report["images"][0]["n_pred"] == counts[name]
    assert isbi["calibrated"] == isbi["plain"]
