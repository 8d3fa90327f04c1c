"""Evaluation reports: perfect predictions, pooling, input kinds."""

import numpy as np
import pytest

from biounet.evaluation import as_probabilities, evaluate, parse_metric_groups
from biounet.metrics.matching import match_instances
from biounet.postprocess import PostprocessConfig


def two_cells():
    truth = np.zeros((40, 40), np.int32)
    truth[5:20, 5:20] = 1
    truth[22:35, 10:30] = 2
    return truth


def test_identical_labels_score_perfectly():
    truth = two_cells()
    report = evaluate([("a", truth, truth), ("b", truth, truth)])
    overall = report.overall
    assert overall["pixel_error"] == 0 and overall["rand_error"] == 0 and overall["warping_error"] == 0
    assert overall["seg"] == 1 and overall["ap_50"] == 1 and overall["dsb_score"] == 1
    assert [row["image"] for row in report.rows] == ["a", "b"]


def test_probability_maps_are_postprocessed_for_instances():
    truth = two_cells()
    probabilities = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    report = evaluate([("a", truth, probabilities)], metrics="instance,ctc")
    assert report.rows[0]["ap_50"] == 1.0 and report.overall["seg"] == 1.0
    assert "rand_error" not in report.rows[0]


def test_pooling_counts_objects_not_images():
    truth = two_cells()
    missing_one = np.where(truth == 2, 0, truth)
    report = evaluate([("full", truth, truth), ("half", truth, missing_one)], metrics="instance,ctc")
    # 4 reference objects, 3 found: AP = 3 / (3 + 0 + 1), SEG = (1 + 1 + 1 + 0) / 4
    assert report.overall["ap_50"] == pytest.approx(0.75)
    assert report.overall["seg"] == pytest.approx(0.75)
    (direct,) = match_instances(truth, missing_one)
    assert report.rows[1]["ap_50"] == direct.average_precision


def test_bad_inputs():
    truth = two_cells()
    with pytest.raises(ValueError, match="shape"):
        evaluate([("a", truth, truth[:30])])
    with pytest.raises(ValueError, match="expected probabilities in \\[0, 1\\]"):
        as_probabilities(np.full((4, 4), 2.0))
    with pytest.raises(ValueError, match="metrics must be"):
        parse_metric_groups("isbi,speed")


def test_3d_volumes_match_instances_in_3d_and_isbi_errors_slice_by_slice():
    truth = np.stack([two_cells()] * 5)  # two cells through five slices
    report = evaluate([("v", truth, truth)])
    overall = report.overall
    assert report.rows[0]["n_true"] == 2  # one object per cell, not one per slice
    assert overall["seg"] == 1 and overall["ap_50"] == 1 and overall["dsb_score"] == 1
    assert overall["pixel_error"] == 0 and overall["rand_error"] == 0
    # a cell cut in two along Z is two objects in 3-D, though each slice looks right
    split = truth.copy()
    split[3:][split[3:] == 2] = 3
    row = evaluate([("v", truth, split)], metrics="instance,ctc").rows[0]
    assert row["n_pred"] == 3 and row["ap_50"] < 1 and row["seg"] < 1


def two_touching_discs():
    """Two discs joined by a neck of probability 0.55: merged at threshold 0.5, split above."""
    y, x = np.mgrid[:40, :60]
    labels = np.zeros((40, 60), np.int32)
    labels[(y - 20) ** 2 + (x - 18) ** 2 < 100] = 1
    labels[(y - 20) ** 2 + (x - 41) ** 2 < 100] = 2
    probability = np.where(labels > 0, 0.95, 0.05).astype(np.float32)
    neck = (abs(y - 20) <= 4) & (x >= 26) & (x <= 33)
    probability[neck & (labels == 0)] = 0.55
    return labels, probability


def test_select_postprocess_picks_the_first_best_candidate():
    from biounet.evaluation import POSTPROCESS_GRID, select_postprocess

    labels, probability = two_touching_discs()
    candidates = [
        PostprocessConfig(watershed=False),  # merges the discs
        PostprocessConfig(threshold=0.6, watershed=False),  # cuts the neck
        PostprocessConfig(threshold=0.7, watershed=False),  # so does this: a tie
    ]
    chosen, rows = select_postprocess([("a", labels, probability)], candidates=candidates)
    scores = [evaluate([("a", labels, probability)], metrics="instance", postprocess=c).overall["ap_50"] for c in candidates]
    assert [row["ap_50"] for row in rows] == scores
    assert scores[0] < scores[1] == scores[2] == 1.0
    assert chosen == candidates[1]
    assert POSTPROCESS_GRID[0] == PostprocessConfig() and len(set(POSTPROCESS_GRID)) == len(POSTPROCESS_GRID)


def test_select_postprocess_refuses_bad_input():
    from biounet.evaluation import select_postprocess

    labels, probability = two_touching_discs()
    with pytest.raises(ValueError, match="metric must be one of .*got 'rand'"):
        select_postprocess([("a", labels, probability)], metric="rand")
    with pytest.raises(ValueError, match="prediction a is a label image"):
        select_postprocess([("a", labels, labels)])
    with pytest.raises(ValueError, match="at least one"):
        select_postprocess([("a", labels, probability)], candidates=[])
