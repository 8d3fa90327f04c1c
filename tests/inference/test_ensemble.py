"""Model ensembles: the mean of the members' own predictions, and one-line refusals."""

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.inference.ensemble import check_ensemble, predict_ensemble
from biounet.inference.predict import predict_tiled
from biounet.inference.tta import predict_tta
from biounet.model.unet import UNet


def _network(seed: int, **config) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetConfig(**{"depth": 2, "base_channels": 4, **config})).eval()


@pytest.mark.parametrize("tta", [False, True])
def test_equals_the_mean_of_the_members_own_predictions(rng, tta):
    # Members of different depth and padding: each is tiled on its own grid.
    members = [_network(0), _network(1, depth=3), _network(2, padding="same")]
    image = rng.random((41, 58), dtype=np.float32)
    averaged = predict_ensemble(members, image, tta=tta)
    single = predict_tta if tta else predict_tiled
    reference = sum(single(model, image).astype(np.float64) for model in members) / 3
    assert averaged.dtype == np.float32 and averaged.shape == (2, 41, 58)
    np.testing.assert_allclose(averaged, reference, atol=1e-6)
    np.testing.assert_allclose(averaged.sum(axis=0), 1.0, atol=1e-5)
    # Not just one member's map passed through.
    assert all(np.abs(averaged - single(m, image)).max() > 1e-4 for m in members)


def test_one_member_is_that_member_and_options_reach_every_member(rng):
    model = _network(0)
    image = rng.random((30, 30), dtype=np.float32)
    np.testing.assert_array_equal(
        predict_ensemble([model], image, tile_shape=(60, 60)),
        predict_tiled(model, image, tile_shape=(60, 60)),
    )
    with pytest.raises(ValueError, match="tile_shape"):
        # 60 is valid for the depth-2 first member, not for the depth-3 second one,
        # so only an option passed on to the second member can raise.
        predict_ensemble([model, _network(1, depth=3)], image, tile_shape=(60, 60))


def test_members_that_predict_differently_are_refused_by_name():
    base = _network(0)
    for other, field in (
        (_network(1, n_classes=3), "n_classes"),
        (_network(1, in_channels=2), "in_channels"),
        (_network(1, n_classes=3, boundary_class=True), "n_classes"),
    ):
        with pytest.raises(ValueError, match=rf"models\[1\] has {field}="):
            check_ensemble([base, other])
    three_class = _network(0, n_classes=3)
    with pytest.raises(ValueError, match=r"models\[1\] has boundary_class=True"):
        check_ensemble([three_class, _network(1, n_classes=3, boundary_class=True)])
    with pytest.raises(ValueError, match="at least one network"):
        predict_ensemble([], np.zeros((20, 20)))
    with pytest.raises(TypeError, match="sequence of networks, got UNet"):
        predict_ensemble(base, np.zeros((20, 20)))
    with pytest.raises(TypeError, match=r"models\[1\] must be a biounet network"):
        check_ensemble([base, torch.nn.Identity()])
