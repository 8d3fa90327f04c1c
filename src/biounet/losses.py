"""Pixel-wise weighted soft-max cross-entropy, eq. 1 of Ronneberger et al. 2015, and the
skeleton recall term (Kirchhoff et al. 2024) that the `skeleton_recall` option adds to it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as functional
from torch import nn


def weighted_cross_entropy(
    scores: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the mean over pixels of w(x) * -log p_l(x)(x), eq. 1 with the weights of eq. 2.

    The paper's energy is the *sum* over all pixels; the mean divides it by the number
    of pixels, so the learning rate means the same for any tile size or batch size.

    Args:
        scores: (B, K, *spatial) unnormalised class scores a_k(x).
        target: (B, *spatial) integer true class l(x) in [0, K).
        weights: (B, *spatial) w(x); None weighs every pixel 1.

    Example:
        >>> scores = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]]]])  # B=1, K=2, 1x2 pixels
        >>> target = torch.tensor([[[1, 0]]])
        >>> round(weighted_cross_entropy(scores, target, torch.tensor([[[1.0, 3.0]]])).item(), 4)
        0.347
    """
    if scores.ndim != target.ndim + 1 or scores.shape[:1] + scores.shape[2:] != target.shape:
        raise ValueError(
            f"scores (B, K, ...) {tuple(scores.shape)} and target (B, ...) "
            f"{tuple(target.shape)} do not match"
        )
    per_pixel = functional.cross_entropy(scores, target.long(), reduction="none")
    if weights is not None:
        if weights.shape != target.shape:
            raise ValueError(
                f"weights shape {tuple(weights.shape)} must equal target shape "
                f"{tuple(target.shape)}"
            )
        per_pixel = per_pixel * weights
    return per_pixel.mean()


class WeightedCrossEntropy(nn.Module):
    """Module form of `weighted_cross_entropy`."""

    def forward(
        self, scores: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return weighted_cross_entropy(scores, target, weights)


def target_skeletons(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Return the tubed skeleton of every class of every target: (B, K, *spatial) float32.

    Kirchhoff et al. 2024 (ECCV) skeletonise the ground truth, dilate the skeleton into
    a tube two pixels wide on each side and keep it inside the structure. Here each class
    is skeletonised on its own (`skimage.morphology.skeletonize`), dilated twice over the
    face neighbours and kept inside the class, so the background class gets a tube too:
    in EM membrane maps the thin structure is class 0 (cells are the foreground).
    Volumes are skeletonised and dilated slice by slice in (Y, X). Computed on the target
    after augmentation, which is what the network is scored against.

    Args:
        target: (B, Y, X) or (B, Z, Y, X) integer class map, values in [0, n_classes).
        n_classes: K, the network's classes.

    Example:
        >>> target = torch.zeros(1, 5, 9, dtype=torch.int64); target[0, :, 2:7] = 1
        >>> target_skeletons(target, 2)[0, 1, 2].tolist()  # a row across the band
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    """
    from scipy import ndimage
    from skimage.morphology import skeletonize

    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    if target.ndim not in (3, 4) or target.is_floating_point() or target.is_complex():
        raise ValueError(
            "target must be an integer (B, Y, X) or (B, Z, Y, X) class map, got "
            f"{target.dtype} of shape {tuple(target.shape)}"
        )
    labels = target.detach().cpu().numpy()
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"target classes must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]"
        )
    faces = ndimage.generate_binary_structure(2, 1)
    out = np.zeros((labels.shape[0], n_classes, *labels.shape[1:]), dtype=np.float32)
    for item, classes in enumerate(labels):
        for k in range(n_classes):
            mask = classes == k
            if not mask.any():
                continue
            # skimage's 3-D thinning (Lee) deletes slabs and thin tubes whole (0.26: a
            # 16x4x4 bar has no skeleton), so volumes go slice by slice
            planes = mask.reshape(-1, *mask.shape[-2:])
            tubes = [
                ndimage.binary_dilation(skeletonize(plane), faces, iterations=2) & plane
                for plane in planes
            ]
            out[item, k] = np.stack(tubes).reshape(mask.shape)
    return torch.from_numpy(out).to(target.device)


def skeleton_recall(
    scores: torch.Tensor, skeletons: torch.Tensor, *, across_ranks: bool = False
) -> torch.Tensor:
    """Return 1 - the mean over classes of the soft recall of each class on its skeleton.

    The skeleton recall loss of Kirchhoff et al. 2024 (ECCV): for class k the
    recall is sum_x p_k(x) S_k(x) / sum_x S_k(x), pooled over the batch, with p the
    soft-max of `scores` and S_k the tube from `target_skeletons`. A gap in a membrane
    costs in proportion to its length along the skeleton, however thin it is, so the
    term stresses connectivity, which the pixel-wise loss of eq. 1 weighs by area.
    Unlike the paper, which leaves the background out and smooths empty classes, every
    class with skeleton pixels in the batch counts and classes without do not; with two
    classes the term is the mean of two recalls, so a weight W here matches W / 2 on
    the foreground alone in the paper's setting (it used 1).

    Args:
        scores: (B, K, *spatial) unnormalised class scores.
        skeletons: (B, K, *spatial) tubes, from `target_skeletons`.
        across_ranks: pool the sums over all data-parallel processes (differentiably),
            so N ranks with batch B give the recall of the whole N x B batch.

    Example:
        >>> scores = torch.tensor([[[[4.0, 4.0]], [[0.0, 0.0]]]])  # B=1, K=2, 1x2 pixels
        >>> skeletons = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
        >>> round(skeleton_recall(scores, skeletons).item(), 4)  # class 1 missed
        0.5
    """
    if scores.shape != skeletons.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and skeletons {tuple(skeletons.shape)} must have "
            "the same shape (B, K, ...)"
        )
    probabilities = torch.softmax(scores, dim=1)
    axes = [0, *range(2, scores.ndim)]
    sums = torch.stack([skeletons.sum(dim=axes), (probabilities * skeletons).sum(dim=axes)])
    if across_ranks:
        import torch.distributed.nn.functional as distributed_functional

        sums = distributed_functional.all_reduce(sums)
    length, covered = sums
    present = length > 0
    if not present.any():
        return scores.sum() * 0.0
    return 1.0 - (covered[present] / length[present]).mean()
