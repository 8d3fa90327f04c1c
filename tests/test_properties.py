"""Properties that hold for every input: geometry, tiling, weight maps, metrics, augmentation.

Hypothesis draws the inputs (few examples each, no deadline); where a property is a value,
it is checked against a slow, obvious reference kept here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from biounet.augment.elastic import apply_displacement, upsample_displacement
from biounet.augment.pipeline import AugmentConfig, augment
from biounet.config import UNetConfig
from biounet.geometry import (
    halo,
    is_valid_input_size,
    min_input_size,
    nearest_valid_sizes,
    output_size,
    valid_input_size,
)
from biounet.inference.predict import predict_tiled
from biounet.inference.tiling import make_tile_grid, read_window, smallest_tile_size
from biounet.metrics.ctc import seg_score
from biounet.metrics.isbi import pixel_error, rand_error
from biounet.metrics.matching import match_instances
from biounet.metrics.overlap import contingency_table, iou_matrix
from biounet.metrics.semantic import variation_of_information
from biounet.model.unet import UNet
from biounet.weights import class_weight_map, weight_map

FEW = settings(max_examples=40, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
FEWER = settings(max_examples=15, deadline=None)


# --- geometry ----------------------------------------------------------------------------------


def reference_output_size(size: int, depth: int) -> int | None:
    """Walk the paper's layer list (Fig. 1) one layer at a time; None where it breaks."""
    layers = (["conv", "conv", "pool"] * depth + ["conv", "conv"]
              + ["upconv", "conv", "conv"] * depth)
    current = size
    for layer in layers:
        if layer == "conv":  # 3x3, unpadded
            current -= 2
        elif layer == "pool":  # 2x2, stride 2, on an even size only
            if current % 2:
                return None
            current //= 2
        else:  # 2x2 up-convolution
            current *= 2
        if current < 1:
            return None
    return current


def reference_valid_sizes(depth: int, up_to: int) -> list[int]:
    return [size for size in range(1, up_to + 1) if reference_output_size(size, depth)]


@FEW
@given(depth=st.integers(0, 5), size=st.integers(1, 1200))
def test_output_size_is_the_layer_walk(depth, size):
    expected = reference_output_size(size, depth)
    assert is_valid_input_size(size, depth=depth) == (expected is not None)
    if expected is None:
        with pytest.raises(ValueError, match=f"input size {size} on axis 0 is not valid"):
            output_size(size, depth=depth)
    else:
        assert output_size(size, depth=depth) == expected


@FEW
@given(depth=st.integers(0, 5), steps=st.integers(0, 60))
def test_every_valid_size_round_trips(depth, steps):
    size = min_input_size(depth=depth) + steps * 2**depth
    output = output_size(size, depth=depth)
    assert output == size - 2 * halo(depth=depth)
    assert valid_input_size(output + 2 * halo(depth=depth), depth=depth) == size
    assert output_size(output + 2 * halo(depth=depth), depth=depth) == output


@FEW
@given(depth=st.integers(0, 5), size=st.integers(1, 1200))
def test_nearest_valid_sizes_bracket_with_nothing_between(depth, size):
    below, above = nearest_valid_sizes(size, depth=depth)
    valid = set(reference_valid_sizes(depth, above))
    assert above >= size and above in valid
    assert not any(candidate in valid for candidate in range(size, above))
    if below is None:
        assert not any(candidate in valid for candidate in range(1, size + 1))
    else:
        assert below <= size and below in valid
        assert not any(candidate in valid for candidate in range(below + 1, size + 1))


@FEW
@given(depth=st.integers(0, 5), size=st.integers(1, 600))
def test_same_padding_keeps_multiples_of_the_pooling_factor(depth, size):
    if size % 2**depth == 0:
        assert output_size(size, depth=depth, padding="same") == size
    else:
        below, above = nearest_valid_sizes(size, depth=depth, padding="same")
        assert above % 2**depth == 0 and above - 2**depth < size < above
        assert below is None or below == above - 2**depth
        with pytest.raises(ValueError, match="positive multiple"):
            output_size(size, depth=depth, padding="same")


# --- tiling ------------------------------------------------------------------------------------


@st.composite
def grids(draw, ndim: int = 2, max_image: int = 260):
    depth = draw(st.integers(1, 3))
    config = UNetConfig(depth=depth, base_channels=2, ndim=ndim)
    image_shape = tuple(draw(st.integers(1, max_image)) for _ in range(ndim))
    smallest = smallest_tile_size(config)
    tile_shape = tuple(smallest + 2**depth * draw(st.integers(0, 10)) for _ in range(ndim))
    return config, image_shape, tile_shape


@FEW
@given(grids())
def test_tiles_cover_the_image_exactly_once_on_the_pooling_grid(case):
    config, image_shape, tile_shape = case
    grid = make_tile_grid(config, image_shape, tile_shape)
    margin = halo(depth=config.depth)
    tile_output = tuple(output_size(size, depth=config.depth) for size in tile_shape)
    count = np.zeros(image_shape, dtype=np.int32)
    tiles = list(grid)
    assert len(tiles) == len(grid) == math.prod(grid.counts)
    for tile in tiles:
        for start, stop, size in zip(tile.output_start, tile.output_stop, image_shape):
            assert 0 <= start < stop <= size
            assert start % 2**config.depth == 0
        assert tuple(s - i for s, i in zip(tile.output_start, tile.input_start)) == \
            (margin,) * len(image_shape)
        for piece, size in zip(tile.crop_slices(), tile_output):
            assert 0 <= piece.start < piece.stop <= size
        count[tile.output_slices] += 1
    assert (count == 1).all()


@FEWER
@given(grids(ndim=3, max_image=40))
def test_3d_tiles_cover_the_volume_exactly_once(case):
    config, image_shape, tile_shape = case
    count = np.zeros(image_shape, dtype=np.int32)
    for tile in make_tile_grid(config, image_shape, tile_shape):
        count[tile.output_slices] += 1
    assert (count == 1).all()


@FEW
@given(shape=st.tuples(st.integers(2, 30), st.integers(2, 30)),
       start=st.tuples(st.integers(-25, 25), st.integers(-25, 25)),
       window=st.tuples(st.integers(1, 40), st.integers(1, 40)), seed=st.integers(0, 2**16))
def test_read_window_is_a_crop_of_the_mirrored_image(shape, start, window, seed):
    image = np.random.default_rng(seed).random((2, *shape))
    # numpy "reflect" once per side reaches size - 1 pixels: enough here when the axes
    # are long; a longer reach needs repeated reflection, which mirror_indices does
    assume(all(-s <= size - 1 and s + w - size <= size - 1
               for s, w, size in zip(start, window, shape)))
    pad = [(0, 0), *((max(0, -s), max(0, s + w - size)) for s, w, size in
                     zip(start, window, shape))]
    padded = np.pad(image, pad, mode="reflect")
    offsets = [max(0, -s) + s for s in start]
    expected = padded[:, offsets[0] : offsets[0] + window[0], offsets[1] : offsets[1] + window[1]]
    np.testing.assert_array_equal(read_window(image, start, window), expected)


@FEWER
@given(height=st.integers(1, 70), width=st.integers(1, 70), extra=st.integers(0, 3),
       seed=st.integers(0, 2**16))
def test_tiled_prediction_equals_one_whole_pass(height, width, extra, seed):
    torch.manual_seed(seed)
    model = UNet(UNetConfig(depth=1, base_channels=2)).eval()
    image = np.random.default_rng(seed).random((height, width), dtype=np.float32)
    tile = smallest_tile_size(model.config) + 2 * extra
    tiled = predict_tiled(model, image, tile_shape=(tile, tile))
    whole = predict_tiled(model, image, tile_shape="whole")
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


# --- weight maps (Ronneberger et al. 2015, eq. 2) --------------------------------------------

label_images = arrays(np.int32, st.tuples(st.integers(2, 24), st.integers(2, 24)),
                      elements=st.integers(0, 4))


def permute_ids(labels: np.ndarray, seed: int) -> np.ndarray:
    """Give every non-zero id another distinct non-zero id (sometimes very large ones)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels[labels > 0])
    new_ids = rng.choice(np.arange(1, 10 * len(ids) + 2), size=len(ids), replace=False)
    if seed % 2:
        new_ids = new_ids * 100_003  # sparse ids, larger than the pixel count
    lookup = dict(zip(ids.tolist(), new_ids.tolist()))
    permuted = np.zeros_like(labels, dtype=np.int64)
    for old, new in lookup.items():
        permuted[labels == old] = new
    return permuted


@FEW
@given(labels=label_images, w0=st.floats(0.0, 20.0), sigma=st.floats(0.5, 8.0))
def test_weight_map_is_at_least_the_class_weight(labels, w0, sigma):
    weights = weight_map(labels, w0=w0, sigma=sigma)
    assert (weights >= class_weight_map(labels) - 1e-6).all()
    assert np.isfinite(weights).all()


@FEW
@given(labels=label_images, seed=st.integers(0, 2**16))
def test_weight_map_ignores_which_id_a_cell_has(labels, seed):
    np.testing.assert_allclose(weight_map(permute_ids(labels, seed)), weight_map(labels),
                               rtol=0, atol=1e-5)


@FEW
@given(labels=label_images, axis=st.sampled_from([0, 1, "transpose"]))
def test_weight_map_commutes_with_mirroring(labels, axis):
    def mirror(array):
        return array.T if axis == "transpose" else np.flip(array, axis)

    np.testing.assert_allclose(weight_map(mirror(labels)), mirror(weight_map(labels)),
                               rtol=0, atol=1e-5)


# --- metrics -----------------------------------------------------------------------------------


def reference_contingency(reference: np.ndarray, prediction: np.ndarray) -> dict:
    counts: dict[tuple[int, int], int] = {}
    for a, b in zip(reference.ravel().tolist(), prediction.ravel().tolist()):
        counts[a, b] = counts.get((a, b), 0) + 1
    return counts


def as_dict(table, reference_ids, prediction_ids) -> dict:
    dense = table.toarray()
    return {(int(reference_ids[i]), int(prediction_ids[j])): int(dense[i, j])
            for i, j in zip(*np.nonzero(dense))}


@st.composite
def label_pairs(draw):
    shape = draw(st.tuples(st.integers(1, 20), st.integers(1, 20)))
    first = draw(arrays(np.int32, shape, elements=st.integers(0, 5)))
    second = draw(arrays(np.int32, shape, elements=st.integers(0, 5)))
    return first, second


def separated_instances(mask: np.ndarray) -> np.ndarray:
    """Face-connected components of a mask: instances never touch one another."""
    return ndimage.label(mask)[0]


@FEW
@given(pair=label_pairs())
def test_contingency_table_counts_every_pixel_pair(pair):
    reference, prediction = pair
    assert as_dict(*contingency_table(reference, prediction)) == \
        reference_contingency(reference, prediction)
    table, _, _ = contingency_table(reference, prediction)
    swapped, _, _ = contingency_table(prediction, reference)
    np.testing.assert_array_equal(swapped.toarray(), table.toarray().T)


@FEW
@given(pair=label_pairs())
def test_iou_matrix_is_the_jaccard_index_of_every_pair(pair):
    reference, prediction = pair
    iou, reference_ids, prediction_ids = iou_matrix(reference, prediction)
    for i, r in enumerate(reference_ids):
        for j, p in enumerate(prediction_ids):
            is_r, is_p = reference == r, prediction == p
            assert iou[i, j] == pytest.approx((is_r & is_p).sum() / (is_r | is_p).sum())
    swapped, _, _ = iou_matrix(prediction, reference)
    np.testing.assert_allclose(swapped, iou.T)


@FEW
@given(labels=label_images, threshold=st.floats(0.0, 1.0))
def test_identical_labels_score_perfectly(labels, threshold):
    (result,) = match_instances(labels, labels, thresholds=(threshold,))
    assert result.f1 == result.average_precision == result.precision == result.recall == 1.0
    seg = seg_score(labels, labels).score
    assert seg == 1.0 if labels.any() else math.isnan(seg)
    vi = variation_of_information(labels, labels)
    assert vi.split == vi.merge == 0.0


@FEW
@given(mask=arrays(bool, st.tuples(st.integers(3, 24), st.integers(3, 24))))
def test_a_perfect_membrane_map_has_no_isbi_error(mask):
    assume(mask.any())
    truth = separated_instances(mask)
    probabilities = mask.astype(np.float64)
    assert rand_error(truth, probabilities).value == 0.0
    assert pixel_error(truth, probabilities).value == 0.0


@FEW
@given(pair=label_pairs(), seed=st.integers(0, 2**16),
       thresholds=st.lists(st.floats(0.05, 1.0), min_size=1, max_size=3))
def test_matching_and_seg_ignore_which_id_an_object_has(pair, seed, thresholds):
    reference, prediction = pair
    original = match_instances(reference, prediction, thresholds=thresholds)
    permuted = match_instances(permute_ids(reference, seed), permute_ids(prediction, seed + 1),
                               thresholds=thresholds)
    for a, b in zip(original, permuted):
        assert a.n_true_positives == b.n_true_positives
        assert a.average_precision == pytest.approx(b.average_precision)
        assert a.sum_matched_iou == pytest.approx(b.sum_matched_iou)
    seg, permuted_seg = (seg_score(reference, prediction).score,
                         seg_score(permute_ids(reference, seed), permute_ids(prediction, seed)).score)
    assert seg == pytest.approx(permuted_seg, nan_ok=True)


@FEW
@given(pair=label_pairs(), threshold=st.floats(0.0, 1.0))
def test_matching_is_symmetric_with_precision_and_recall_swapped(pair, threshold):
    reference, prediction = pair
    (forward,) = match_instances(reference, prediction, thresholds=(threshold,))
    (backward,) = match_instances(prediction, reference, thresholds=(threshold,))
    assert forward.n_true_positives == backward.n_true_positives
    assert forward.precision == pytest.approx(backward.recall)
    assert forward.f1 == pytest.approx(backward.f1)
    assert forward.average_precision == pytest.approx(backward.average_precision)


@FEW
@given(pair=label_pairs())
def test_variation_of_information_swaps_split_and_merge(pair):
    reference, prediction = pair
    forward = variation_of_information(reference, prediction)
    backward = variation_of_information(prediction, reference)
    assert forward.split == pytest.approx(backward.merge, abs=1e-12)
    assert forward.merge == pytest.approx(backward.split, abs=1e-12)


# --- augmentation (Sec. 3.1) -------------------------------------------------------------------

EVERYTHING_OFF = AugmentConfig(elastic_sigma_px=0.0, max_rotation_deg=0.0, max_shift_px=0.0,
                               flip_probability=0.0, brightness_range=(0.0, 0.0),
                               contrast_range=(1.0, 1.0), gamma_range=(1.0, 1.0))


@FEW
@given(shape=st.tuples(st.integers(1, 3), st.integers(2, 30), st.integers(2, 30)),
       grid=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_zero_displacement_is_the_identity(shape, grid, seed):
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    labels = rng.integers(0, 9, shape[1:]).astype(np.int32)
    weights = rng.random(shape[1:])
    outputs = apply_displacement([image, labels, weights], np.zeros((2, grid, grid)))
    for before, after in zip([image, labels, weights], outputs):
        assert after.dtype == before.dtype
        np.testing.assert_array_equal(after, before)


@FEW
@given(shape=st.tuples(st.integers(2, 30), st.integers(2, 30)), seed=st.integers(0, 2**16),
       backend=st.sampled_from(["scipy", "torch"]))
def test_augmentation_with_everything_off_is_the_identity(shape, seed, backend):
    rng = np.random.default_rng(seed)
    image = rng.random((1, *shape)).astype(np.float32)
    labels = rng.integers(0, 9, shape).astype(np.int32)
    weights = rng.random(shape).astype(np.float32)
    outputs = augment(image, labels, weights, config=EVERYTHING_OFF, rng=seed, backend=backend)
    for before, after in zip([image, labels, weights], outputs):
        np.testing.assert_array_equal(after, before)


@FEW
@given(value=st.floats(-20, 20), grid=st.tuples(st.integers(2, 5), st.integers(2, 5)),
       shape=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_a_constant_grid_moves_every_pixel_alike(value, grid, shape):
    field = upsample_displacement(np.full((2, *grid), value), shape)
    np.testing.assert_allclose(field, value, rtol=0, atol=1e-9 * max(1.0, abs(value)))
