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
