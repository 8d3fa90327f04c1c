"""Run configs: presets, JSON sections, the augmentation following a 3-D network."""

import pytest

from biounet.training.presets import preset


def test_augmentation_follows_a_3d_network():
    run = preset("cpu").updated({"model": {"ndim": 3, "depth": 2, "pool_z": [False, True]}})
    assert run.model.pool_z == (False, True) and run.augment.ndim == 3
    # per-axis values for (Z, Y, X) are read against the network's three axes
    run = preset("cpu").updated(
        {"model": {"ndim": 3}, "augment": {"elastic_sigma_px": [1.0, 4.0, 4.0]}}
    )
    assert run.augment.ndim == 3 and run.augment.elastic_sigma_px == (1.0, 4.0, 4.0)
    assert run.updated(run.to_dict()) == run
    assert preset("cpu").updated({"augment": None}).augment is None
    assert preset("paper").augment.ndim == 2


def test_unknown_sections_and_keys_are_named():
    with pytest.raises(ValueError, match="unknown config sections \\['modle'\\]"):
        preset("cpu").updated({"modle": {}})
    with pytest.raises(ValueError, match="pool_z applies to 3-D networks only"):
        preset("cpu").updated({"model": {"pool_z": [False, True, True, True]}})
