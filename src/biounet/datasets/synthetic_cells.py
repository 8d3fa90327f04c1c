"""Step 1 of `biounet.datasets.synthetic`: cells packed into clumps and tessellated into labels.

The module docstring of `biounet.datasets.synthetic` describes the model; this module
draws the labels and nuclei of one image from a `SyntheticConfig` and a generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import spatial
from skimage import measure

from biounet.datasets.synthetic_image import smooth_noise

if TYPE_CHECKING:
    from biounet.datasets.synthetic import SyntheticConfig

_CORE_FRACTION = 0.6  # core disk radius / cell radius: the weight of the Voronoi tessellation
_PACKING_FRACTION = 0.75  # packed disks have this fraction of the cell radius, so cells touch
_REACH = 1.1  # farthest a cell reaches from its centre, in cell radii
_CANDIDATES_PER_CELL = 6  # oversampling of the greedy packing; more gives denser clumps
_NUCLEUS_FRACTION = 0.4  # nucleus radius / cell radius
_WARP_SCALE = 0.5  # correlation length of the outline displacement / mean cell radius


def sample_labels(
    shape: tuple[int, int], config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tessellate clumps into cells; return (labels int32, nuclei bool), both (Y, X).

    A pixel belongs to the cell minimising its distance to the centre minus the core
    radius (additively weighted Voronoi), among the cells within reach; distances are
    taken at smoothly displaced coordinates, which bends the outlines.
    """
    mean_radius = sum(config.cell_diameter_px) / 4
    amplitude = config.shape_irregularity * mean_radius
    slack = 2.5 * amplitude  # only the far rim of a cell can be displaced farther
    # Cells centred outside the image reach into it, so the image edge cuts cells.
    margin = _REACH * config.cell_diameter_px[1] / 2 + slack
    centres, radii = _pack_cells(shape, margin, config, rng)
    nucleus_centres = centres + rng.normal(0, 0.1, centres.shape) * radii[:, None]  # off-centre
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    columns = np.arange(shape[1], dtype=np.float32)[None, :]
    if amplitude > 0:
        scale = _WARP_SCALE * mean_radius
        rows = rows + np.float32(amplitude) * smooth_noise(shape, scale, rng)
        columns = columns + np.float32(amplitude) * smooth_noise(shape, scale, rng)
    rows, columns = np.broadcast_to(rows, shape), np.broadcast_to(columns, shape)

    labels, nuclei = _tessellate(rows, columns, centres, radii, nucleus_centres, slack)
    labels = _keep_largest_components(labels)
    return labels, nuclei & (labels > 0)


def _tessellate(
    rows: np.ndarray,
    columns: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    nucleus_centres: np.ndarray,
    slack: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint cells into (labels, nuclei) at the (displaced) pixel coordinates rows, columns.

    Each cell is evaluated in its bounding box only (enlarged by `slack`, the largest
    expected displacement), keeping per pixel the smallest weighted distance so far.
    """
    shape = rows.shape
    labels = np.zeros(shape, np.int32)
    nuclei = np.zeros(shape, bool)
    nearest = np.full(shape, np.inf, np.float32)
    cells = zip(centres.tolist(), nucleus_centres.tolist(), radii.tolist())
    for index, ((row, column), (nucleus_row, nucleus_column), radius) in enumerate(cells, 1):
        reach = _REACH * radius
        top, left = max(int(row - reach - slack), 0), max(int(column - reach - slack), 0)
        bottom = min(int(row + reach + slack) + 2, shape[0])
        right = min(int(column + reach + slack) + 2, shape[1])
        if top >= bottom or left >= right:
            continue
        box = (slice(top, bottom), slice(left, right))
        box_rows, box_columns = rows[box], columns[box]
        distance = np.hypot(box_rows - row, box_columns - column)
        claimed = distance <= reach
        distance -= _CORE_FRACTION * radius  # additive weight: big cells push borders outwards
        claimed &= distance < nearest[box]
        np.copyto(nearest[box], distance, where=claimed)
        np.copyto(labels[box], index, where=claimed)
        in_nucleus = np.hypot(box_rows - nucleus_row, box_columns - nucleus_column)
        np.copyto(nuclei[box], in_nucleus <= _NUCLEUS_FRACTION * radius, where=claimed)
    return labels, nuclei


def _pack_cells(
    shape: tuple[int, int], margin: float, config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (N, 2) and radii (N,): disks packed in clumps, larger disks first.

    Centres may lie up to `margin` outside the image, so that clumps continue past its edge.
    """
    pad = int(np.ceil(margin))
    shape = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    clumps = smooth_noise(shape, config.clump_size_px, rng)
    threshold = np.quantile(clumps[::4, ::4], 1 - config.fill_fraction)
    inside = np.flatnonzero(clumps > threshold)
    low, high = (diameter / 2 for diameter in config.cell_diameter_px)
    mean_area = np.pi * (low**2 + low * high + high**2) / 3
    n_candidates = int(np.ceil(_CANDIDATES_PER_CELL * inside.size / mean_area))
    if inside.size == 0 or n_candidates == 0:
        return np.zeros((0, 2)), np.zeros(0)
    picked = inside[rng.integers(0, inside.size, n_candidates)]
    centres = (
        np.stack(np.unravel_index(picked, shape), axis=1)
        - pad
        + rng.uniform(-0.5, 0.5, (n_candidates, 2))
    )
    radii = np.sort(rng.uniform(low, high, n_candidates))[::-1]
    exclusion = _PACKING_FRACTION * radii
    pairs = spatial.cKDTree(centres).query_pairs(2 * exclusion[0], output_type="ndarray")
    first, second = pairs[:, 0], pairs[:, 1]
    overlapping = np.hypot(*(centres[first] - centres[second]).T) < (
        exclusion[first] + exclusion[second]
    )
    kept = _greedy_independent_set(n_candidates, first[overlapping], second[overlapping])
    return centres[kept], radii[kept]


def _greedy_independent_set(n_nodes: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Nodes taken in index order, skipping those joined by an edge to a taken one.

    Computed in parallel rounds: a node whose earlier neighbours are all gone is taken
    and its neighbours are dropped; this gives exactly the sequential greedy result.
    """
    earlier, later = np.minimum(first, second), np.maximum(first, second)
    undecided = np.ones(n_nodes, bool)
    taken = np.zeros(n_nodes, bool)
    while undecided.any():
        live = undecided[earlier] & undecided[later]
        earlier, later = earlier[live], later[live]
        waiting = np.zeros(n_nodes, bool)
        waiting[later] = True
        newly_taken = undecided & ~waiting
        taken |= newly_taken
        undecided &= ~newly_taken
        undecided[later[newly_taken[earlier]]] = False
    return np.flatnonzero(taken)


def _keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected piece of every id (others become background); ids 1..N."""
    components = measure.label(labels, background=0, connectivity=1)
    owner = np.zeros(components.max() + 1, np.int64)
    owner[components.ravel()] = labels.ravel()
    sizes = np.bincount(components.ravel())
    order = np.lexsort((sizes, owner))  # per owner, its largest component comes last
    is_last = np.append(owner[order][1:] != owner[order][:-1], True)
    largest = order[is_last & (owner[order] > 0)]
    new_ids = np.zeros(components.max() + 1, np.int32)
    new_ids[largest] = np.arange(1, largest.size + 1, dtype=np.int32)
    return new_ids[components]
