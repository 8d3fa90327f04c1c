"""Test-time augmentation: average overlap-tile predictions over flips and 90-degree rotations.

Ronneberger et al. 2015 train with flips, rotations and elastic deformations (Sec. 3.1);
averaging the predictions for the transformed images, each mapped back exactly,
removes the orientation-dependent part of the network's errors. 2-D images use
the 8 symmetries of the square (dihedral group D4: 4 rotations in the (Y, X) plane,
each with and without a flip); 3-D volumes the 8 flips of the (Z, Y, X) axes, so Z,
often sampled more coarsely, is never rotated into Y or X. It costs 8 predictions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from biounet.inference.predict import as_network_input, predict_tiled


@dataclass(frozen=True)
class Symmetry:
    """Flip the axes `flip_axes`, then rotate by `quarter_turns` x 90 degrees in (Y, X).

    Axes count from the end (-1 = X, -2 = Y, -3 = Z), so leading channel axes pass
    through; the rotation is `np.rot90(array, quarter_turns, axes=(-2, -1))`.
    """

    flip_axes: tuple[int, ...] = ()
    quarter_turns: int = 0

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Return the transformed array (a view where numpy allows).

        Example:
            >>> Symmetry(quarter_turns=1).apply(np.array([[1, 2], [3, 4]])).tolist()
            [[2, 4], [1, 3]]
        """
        if self.flip_axes:
            array = np.flip(array, axis=self.flip_axes)
        return np.rot90(array, self.quarter_turns, axes=(-2, -1))

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Return the array mapped back: `invert(apply(a))` equals `a` exactly.

        Example:
            >>> symmetry = Symmetry(flip_axes=(-1,), quarter_turns=3)
            >>> a = np.arange(6).reshape(2, 3)
            >>> np.array_equal(symmetry.invert(symmetry.apply(a)), a)
            True
        """
        array = np.rot90(array, -self.quarter_turns, axes=(-2, -1))
        if self.flip_axes:
            array = np.flip(array, axis=self.flip_axes)
        return array

    def _steps(self) -> list[int | None]:
        # The transform as axis reversals (an axis) and Y/X swaps (None): numpy's
        # rot90 by one quarter turn reverses X, then swaps Y and X.
        turns = [-1, None] * (self.quarter_turns % 4)
        return [*self.flip_axes, *turns]

    def apply_box(
        self, start: Sequence[int], stop: Sequence[int], shape: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Map the box [start, stop) of an image of spatial `shape` into the transformed image.

        Returns the box's start and stop there and the transformed image's shape, so that
        ``apply(image)[box']`` holds the pixels of ``image[box]``, transformed alike. The box
        may reach past the image: mirroring about the borders commutes with the transform.

        Example:
            >>> Symmetry(quarter_turns=1).apply_box((0, 1), (2, 3), (4, 5))
            ((2, 0), (4, 2), (5, 4))
        """
        start, stop, shape = list(start), list(stop), list(shape)
        for step in self._steps():
            _box_step(step, start, stop, shape)
        return tuple(start), tuple(stop), tuple(shape)

    def invert_box(
        self, start: Sequence[int], stop: Sequence[int], shape: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Map a box of the transformed image (of spatial `shape`) back: `apply_box` undone.

        Example:
            >>> Symmetry(quarter_turns=1).invert_box((2, 0), (4, 2), (5, 4))
            ((0, 1), (2, 3), (4, 5))
        """
        start, stop, shape = list(start), list(stop), list(shape)
        for step in reversed(self._steps()):
            _box_step(step, start, stop, shape)  # each step is its own inverse
        return tuple(start), tuple(stop), tuple(shape)


def _box_step(step: int | None, start: list, stop: list, shape: list) -> None:
    if step is None:
        for values in (start, stop, shape):
            values[-2], values[-1] = values[-1], values[-2]
    else:
        start[step], stop[step] = shape[step] - stop[step], shape[step] - start[step]


def symmetries(ndim: int) -> tuple[Symmetry, ...]:
    """Return the 8 transforms averaged over: D4 in 2-D, the flips of 3 axes in 3-D.

    Example:
        >>> len(symmetries(2)), len(symmetries(3))
        (8, 8)
        >>> symmetries(3)[-1]
        Symmetry(flip_axes=(-3, -2, -1), quarter_turns=0)
    """
    if ndim == 2:
        return tuple(
            Symmetry(flip_axes=flip, quarter_turns=turns)
            for flip in ((), (-1,))
            for turns in range(4)
        )
    if ndim == 3:
        axes = (-3, -2, -1)
        return tuple(
            Symmetry(flip_axes=flip)
            for count in range(4)
            for flip in itertools.combinations(axes, count)
        )
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


def predict_tta(model: nn.Module, image, **predict_tiled_kwargs) -> np.ndarray:
    """Return class probabilities averaged over the 8 symmetries of `symmetries(ndim)`.

    Each transformed image is predicted by `predict_tiled` (which takes any size, so a
    rotated non-square image is fine) and its probabilities are mapped back by the
    exact inverse transform before averaging. Costs 8 predictions.

    Args:
        model: a `UNet` (anything `predict_tiled` accepts).
        image: (*spatial) or (C, *spatial) real-valued array, already normalised.
        **predict_tiled_kwargs: passed on (tile_shape, batch_size, memory_budget, ...).

    Returns:
        (n_classes, *spatial) float32 probabilities; they sum to 1 over classes.
    """
    config = model.config
    array = as_network_input(image, config)
    total = np.zeros((config.n_classes, *array.shape[1:]), dtype=np.float64)
    transforms = symmetries(config.ndim)
    for symmetry in transforms:
        transformed = np.ascontiguousarray(symmetry.apply(array))
        probabilities = predict_tiled(model, transformed, **predict_tiled_kwargs)
        total += symmetry.invert(probabilities)
    return (total / len(transforms)).astype(np.float32)
