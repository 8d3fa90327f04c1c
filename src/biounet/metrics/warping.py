"""Simple-point warping of a binary ground truth onto a thresholded proposal (Jain et al. 2010).

One 2-D slice at a time, as the ISBI 2012 organisers computed it (Fiji Trainable_Segmentation,
`WarpingError.simplePointWarp2d` and `classifyMismatches2d`): the ground truth may change only
at simple points, so the mismatches left after warping are topological errors. The challenge
protocol (thresholds, slices, normalisation) lives in `biounet.metrics.isbi`.
"""

from __future__ import annotations

import enum

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

# (row, column) offsets of the 8 neighbours; bit k of a neighbourhood code is neighbour k.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_FOUR_NEIGHBOURS = ((-1, 0), (0, -1), (0, 1), (1, 0))
_EIGHT_NEIGHBOURS = NEIGHBOUR_OFFSETS
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
# Labels a stack of 2-D windows at once: 4-connected within a window, never across windows.
_FOUR_CONNECTED_STACK = np.stack([np.zeros((3, 3), bool), _FOUR_CONNECTED, np.zeros((3, 3), bool)])
_WINDOW_BATCH = 2048


class MismatchType(enum.IntEnum):
    """Topological effect of a pixel the warping could not fix (Jain et al. 2010)."""

    NONE = 0
    MERGE = 1
    SPLIT = 2
    HOLE_ADDITION = 3
    HOLE_DELETION = 4
    OBJECT_ADDITION = 5
    OBJECT_DELETION = 6


def _components(cells: list[tuple[int, int]], adjacency: tuple[tuple[int, int], ...]) -> list[set]:
    """Split `cells` into connected components under `adjacency` (plain flood fill)."""
    remaining, components = set(cells), []
    while remaining:
        stack = [remaining.pop()]
        component = set(stack)
        while stack:
            row, column = stack.pop()
            for d_row, d_column in adjacency:
                cell = (row + d_row, column + d_column)
                if cell in remaining:
                    remaining.remove(cell)
                    component.add(cell)
                    stack.append(cell)
        components.append(component)
    return components


def _neighbourhood_tables() -> tuple[np.ndarray, np.ndarray]:
    """Return (is_simple, n_ring_components) for every 3x3 neighbourhood code.

    Simple points (Bertrand & Malandain 1994) with foreground 4-adjacent and background
    8-adjacent: T4(x, foreground) == 1 (4-components of the foreground neighbours that touch
    a 4-neighbour of x) and T8(x, background) == 1 (8-components of the background
    neighbours). This equals the organisers' 3-D test of a 2-D patch, `simple2DBertrand(patch,
    4)`. n_ring_components counts the 4-components of all foreground neighbours.
    """
    is_simple = np.zeros(256, dtype=bool)
    n_ring_components = np.zeros(256, dtype=np.int64)
    for code in range(256):
        is_set = [(code >> bit) & 1 for bit in range(8)]
        foreground = [cell for cell, bit in zip(NEIGHBOUR_OFFSETS, is_set) if bit]
        background = [cell for cell, bit in zip(NEIGHBOUR_OFFSETS, is_set) if not bit]
        components = _components(foreground, _FOUR_NEIGHBOURS)
        t4 = sum(any(cell in _FOUR_NEIGHBOURS for cell in component) for component in components)
        t8 = len(_components(background, _EIGHT_NEIGHBOURS))
        is_simple[code] = t4 == 1 and t8 == 1
        n_ring_components[code] = len(components)
    return is_simple, n_ring_components


SIMPLE_POINTS, _RING_COMPONENTS = _neighbourhood_tables()
SIMPLE_POINTS.flags.writeable = False
# Removing a pixel whose foreground neighbours form one 4-component (_RING_COMPONENTS == 1)
# cannot split anything, so only pixels with more need the window relabelling.


def warp_ground_truth(
    ground_truth: ArrayLike, probabilities: ArrayLike, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Warp binary `ground_truth` towards `probabilities > threshold` by flipping simple points.

    Topology-preserving warping (Jain et al. 2010, CVPR) as the organisers ran it: the image
    gets a one-pixel background ring; each pass sorts the current mismatches by float32
    |p - threshold|, descending, ties in column-major order (column outer, row inner), and
    flips every one that is simple in the image as it is at its turn; passes repeat until one
    flips nothing. A pass is evaluated exactly but in vectorised rounds: a pixel's decision
    depends only on the decisions of the mismatches before it among its 8 neighbours, so
    decisions are re-evaluated where an earlier neighbour's decision changed until none
    changes, which is that sequential result.

    Args:
        ground_truth: (Y, X) labels; > 0 is foreground (cell interior).
        probabilities: (Y, X) foreground probabilities, compared in float32 precision.
        threshold: a pixel is proposed foreground when its probability is > threshold.

    Returns:
        `(warped, mismatches)`: (Y, X) bool warped ground truth and (Y, X) bool mask of the
        pixels where it still differs from the thresholded proposal.

    Example:
        >>> truth = np.zeros((5, 5), int); truth[1:4, 1:3] = 1
        >>> proposal = np.zeros((5, 5)); proposal[1:4, 1:4] = 1.0
        >>> warped, mismatches = warp_ground_truth(truth, proposal, 0.5)
        >>> bool((warped == (proposal > 0.5)).all()), int(mismatches.sum())
        (True, 0)
    """
    source, values = _check_slice(ground_truth, probabilities)
    target = values > threshold
    height, width = source.shape
    image = np.zeros((height + 2, width + 2), dtype=bool)
    image[1:-1, 1:-1] = source
    rows, columns = np.nonzero(source != target)
    priority = np.abs(values[rows, columns] - threshold).astype(np.float32)
    order = np.lexsort((rows, columns, -priority))
    pixels = (rows[order] + 1) * (width + 2) + columns[order] + 1
    flat_image = image.ravel()
    n_mismatches = pixels.size
    # rank_image[pixel] = position of a current mismatch in the processing order, else sentinel.
    rank_image = np.full(flat_image.size, n_mismatches, dtype=np.int64)
    rank_image[pixels] = np.arange(n_mismatches)
    steps = np.array([d_row * (width + 2) + d_column for d_row, d_column in NEIGHBOUR_OFFSETS])
    to_test = np.arange(n_mismatches)
    while to_test.size:
        flipped = _flips_of_one_pass(flat_image, rank_image, pixels, steps, to_test)
        if not flipped.size:
            break
        flat_image[pixels[flipped]] ^= True
        rank_image[pixels[flipped]] = n_mismatches
        # A pixel tested before a neighbour flipped saw a different neighbourhood; only such
        # pixels can have become simple, so only they are tested afresh next pass.
        neighbour_ranks = rank_image[pixels[flipped, None] + steps]
        to_test = _unique(neighbour_ranks[neighbour_ranks < flipped[:, None]], n_mismatches)
    warped = image[1:-1, 1:-1].copy()
    return warped, warped != target


def _flips_of_one_pass(
    flat_image: np.ndarray,
    rank_image: np.ndarray,
    pixels: np.ndarray,
    steps: np.ndarray,
    to_test: np.ndarray,
) -> np.ndarray:
    """Return the ranks one pass flips; mismatches outside `to_test` are known not simple."""
    n_mismatches = pixels.size
    decision = np.zeros(n_mismatches + 1, dtype=bool)  # last entry: sentinel, never flips
    while to_test.size:
        neighbours = pixels[to_test, None] + steps
        neighbour_ranks = rank_image[neighbours]
        flipped_before = decision[neighbour_ranks] & (neighbour_ranks < to_test[:, None])
        state = flat_image[neighbours] ^ flipped_before
        is_simple = SIMPLE_POINTS[np.packbits(state, axis=1, bitorder="little")[:, 0]]
        changed = is_simple != decision[to_test]
        decision[to_test] = is_simple
        later = neighbour_ranks[changed]
        later = later[(later > to_test[changed, None]) & (later < n_mismatches)]
        to_test = _unique(later, n_mismatches)
    return np.flatnonzero(decision[:n_mismatches])


def _unique(ranks: np.ndarray, n_ranks: int) -> np.ndarray:
    """Return the sorted distinct `ranks` (all < `n_ranks`); a mask beats hashing when many."""
    if ranks.size * 16 < n_ranks:
        return np.unique(ranks)
    is_present = np.zeros(n_ranks, dtype=bool)
    is_present[ranks] = True
    return np.flatnonzero(is_present)


def classify_mismatches(
    warped: ArrayLike, mismatches: ArrayLike, *, radius: int = 20
) -> np.ndarray:
    """Label each remaining mismatch with its `MismatchType`, as the ISBI 2012 organisers did.

    The ids of the 4-connected components of `warped` among the pixel's in-image 8 neighbours
    (0 = background) decide: only 0 -> object addition (pixel background) or deletion; one
    object -> hole deletion (background) or addition; two ids -> hole addition if background,
    otherwise the pixel is removed and the (2 radius + 1)^2 window around it (outside the
    image = background; the whole image if `radius` < 1 or exceeds a side) is relabelled:
    more than two ids among its neighbours then -> split, else hole deletion; three or more
    ids -> merge (background) or split (foreground).

    Args:
        warped: (Y, X) bool warped ground truth from `warp_ground_truth`.
        mismatches: (Y, X) bool mask of the pixels to classify.
        radius: half-width of the relabelling window (the organisers used 20).

    Returns:
        (Y, X) uint8 image of `MismatchType` values, `NONE` outside `mismatches`.

    Example:
        >>> warped = np.array([[1, 0, 1], [1, 0, 1], [1, 0, 1]], bool)
        >>> codes = classify_mismatches(warped, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
        >>> MismatchType(int(codes[1, 1])).name  # background between two objects
        'MERGE'
    """
    warped = np.asarray(warped, dtype=bool)
    rows, columns = np.nonzero(np.asarray(mismatches, dtype=bool))
    labels, _ = ndimage.label(warped, structure=_FOUR_CONNECTED)
    n_ids, has_background = _neighbour_ids(labels[None], np.zeros_like(rows), rows, columns)
    is_foreground = warped[rows, columns]
    classes = np.where(is_foreground, MismatchType.SPLIT, MismatchType.MERGE)
    only_background = (n_ids == 1) & has_background
    only_object = (n_ids == 1) & ~has_background
    classes[only_background] = np.where(
        is_foreground[only_background], MismatchType.OBJECT_DELETION, MismatchType.OBJECT_ADDITION
    )
    classes[only_object] = np.where(
        is_foreground[only_object], MismatchType.HOLE_ADDITION, MismatchType.HOLE_DELETION
    )
    two_ids = n_ids == 2
    classes[two_ids & ~is_foreground] = MismatchType.HOLE_ADDITION
    padded = np.pad(warped, 1)
    codes = sum(
        padded[rows + 1 + d_row, columns + 1 + d_column].astype(np.int64) << bit
        for bit, (d_row, d_column) in enumerate(NEIGHBOUR_OFFSETS)
    )
    classes[two_ids & is_foreground] = MismatchType.HOLE_DELETION
    to_relabel = np.flatnonzero(two_ids & is_foreground & (_RING_COMPONENTS[codes] > 1))
    splits = _splits_when_removed(warped, rows[to_relabel], columns[to_relabel], radius)
    classes[to_relabel] = np.where(splits, MismatchType.SPLIT, MismatchType.HOLE_DELETION)
    result = np.zeros(warped.shape, dtype=np.uint8)
    result[rows, columns] = classes
    return result


def _neighbour_ids(
    labels: np.ndarray, planes: np.ndarray, rows: np.ndarray, columns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Count the distinct ids among each pixel's in-bounds 8 neighbours; flag id 0 among them."""
    _, height, width = labels.shape
    ids = np.empty((rows.size, 8), dtype=np.int64)
    for bit, (d_row, d_column) in enumerate(NEIGHBOUR_OFFSETS):
        row, column = rows + d_row, columns + d_column
        is_inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
        ids[:, bit] = np.where(
            is_inside, labels[planes, row.clip(0, height - 1), column.clip(0, width - 1)], -1
        )
    ordered = np.sort(ids, axis=1)
    is_first = np.ones(ordered.shape, dtype=bool)
    is_first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    n_ids = (is_first & (ordered >= 0)).sum(axis=1)
    return n_ids, (ids == 0).any(axis=1)


def _splits_when_removed(
    warped: np.ndarray, rows: np.ndarray, columns: np.ndarray, radius: int
) -> np.ndarray:
    """Return, per foreground pixel, whether removing it leaves > 2 ids around it locally."""
    height, width = warped.shape
    is_whole_image = radius < 1 or radius > width or radius > height
    splits = np.zeros(rows.size, dtype=bool)
    for start in range(0, rows.size, _WINDOW_BATCH):
        batch = slice(start, start + _WINDOW_BATCH)
        if is_whole_image:
            windows = np.repeat(warped[None], rows[batch].size, axis=0)
            centre_rows, centre_columns = rows[batch], columns[batch]
        else:
            padded = np.pad(warped, radius)
            views = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2)
            windows = views[rows[batch], columns[batch]].copy()
            centre_rows = centre_columns = np.full(windows.shape[0], radius)
        planes = np.arange(windows.shape[0])
        windows[planes, centre_rows, centre_columns] = False
        labels, _ = ndimage.label(windows, structure=_FOUR_CONNECTED_STACK)
        n_ids, _ = _neighbour_ids(labels, planes, centre_rows, centre_columns)
        splits[batch] = n_ids > 2
    return splits


def _check_slice(
    ground_truth: ArrayLike, probabilities: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Return (foreground bool, probabilities float64 rounded to float32) of one 2-D slice."""
    truth = np.asarray(ground_truth)
    values = np.asarray(probabilities)
    if truth.ndim != 2 or values.shape != truth.shape:
        raise ValueError(
            f"ground_truth and probabilities must be 2-D (Y, X) of one shape, "
            f"got {truth.shape} and {values.shape}"
        )
    # The organisers' ImageJ read 32-bit float images and compared them in double precision.
    return truth > 0, values.astype(np.float32).astype(np.float64)
