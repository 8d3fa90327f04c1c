"""`biounet predict --close-boundaries`: <name>_closed.tif is `close_boundaries` of the map."""

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from biounet.boundaries import close_boundaries
from biounet.cli import main
from biounet.weightfile import save_model


def membranes(rng, shape):
    """Bright cells with dark grid membranes, one of them broken: something to close."""
    image = rng.normal(180, 10, shape)
    image[::24] = image[:, ::24] = 30
    image[24, 30:40] = 100
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture
def map_follows_the_image(monkeypatch):
    """A random network's map holds nothing to close: stand in one that follows the image,
    cells high, membranes low, the broken stretch in between."""
    import biounet.inference.ensemble as ensemble

    def follows_the_image(models, image, **options):
        foreground = np.clip(image[0], 0.05, 0.95).astype(np.float32)
        return np.stack([1 - foreground, foreground])

    monkeypatch.setattr(ensemble, "predict_ensemble", follows_the_image)


def test_closed_map_is_close_boundaries_of_each_page(model_file, tmp_path, rng, map_follows_the_image):
    stack = np.stack([membranes(rng, (96, 120)) for _ in range(2)])
    tifffile.imwrite(tmp_path / "em.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model_file), str(tmp_path / "em.tif"),
                 "--out", str(out), "--close-boundaries", "--quiet"])
    assert code == 0
    probability = tifffile.imread(out / "em_probability.tif")
    closed = tifffile.imread(out / "em_closed.tif")
    assert closed.dtype == np.float32 and closed.shape == probability.shape == (2, 96, 120)
    for page in range(2):
        np.testing.assert_array_equal(closed[page], close_boundaries(probability[page]))
    lines = closed != probability
    assert lines.any() and (closed[lines] == 0).all()
    # below the broken stretch's level the map merges two seeds; the closed map does not
    seeds, _ = ndimage.label(probability[0] > 0.5)

    def most_seeds_in_one_component(values):
        components, n_components = ndimage.label(values > 0.3)
        return max((np.bincount(seeds[components == c])[1:] >= 16).sum()
                   for c in range(1, n_components + 1))

    assert most_seeds_in_one_component(probability[0]) == 2
    assert most_seeds_in_one_component(closed[0]) == 1


def test_a_3d_network_closes_every_z_slice(tmp_path, rng, map_follows_the_image):
    import torch

    from biounet.config import UNetConfig
    from biounet.model.unet import UNet

    torch.manual_seed(0)
    model = UNet(UNetConfig(ndim=3, depth=1, base_channels=2)).eval()
    model_file = save_model(model, tmp_path / "volume.safetensors")
    volume = np.stack([membranes(rng, (72, 80)) for _ in range(3)])
    tifffile.imwrite(tmp_path / "v.tif", volume, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_file), str(tmp_path / "v.tif"),
                 "--out", str(out), "--close-boundaries", "--quiet"]) == 0
    probability = tifffile.imread(out / "v_probability.tif")
    closed = tifffile.imread(out / "v_closed.tif")
    assert closed.shape == probability.shape == (3, 72, 80)
    for z in range(3):
        np.testing.assert_array_equal(closed[z], close_boundaries(probability[z]))
    assert (closed != probability).any()


@pytest.mark.parametrize(
    ("options", "kind"), [({"n_classes": 3, "boundary_class": True}, "a boundary class"), ({"n_classes": 3}, "3 classes")]
)
def test_close_boundaries_is_refused_for_other_than_two_class_networks(tmp_path, capsys, options, kind):
    import torch

    from biounet.config import UNetConfig
    from biounet.model.unet import UNet

    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4, **options))
    model_file = save_model(model.eval(), tmp_path / "three.safetensors")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 40), np.uint8))
    code = main(["predict", "--model", str(model_file), str(tmp_path / "a.tif"),
                 "--out", str(tmp_path / "out"), "--close-boundaries", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--close-boundaries" in err and f"has {kind}" in err and "three.safetensors" in err
    assert not (tmp_path / "out" / "a_closed.tif").exists()


def test_overwrite_without_the_flag_removes_an_earlier_closed_map(model_file, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", membranes(np.random.default_rng(0), (60, 60)))
    common = ["predict", "--model", str(model_file), str(tmp_path / "a.tif"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*common, "--close-boundaries", "--instances"]) == 0
    assert main([*common, "--overwrite", "--instances"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_instances.tif", "a_mask.tif", "a_probability.tif"]


def test_close_boundaries_is_refused_with_zarr_output(model_file, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 40), np.uint8))
    code = main(["predict", "--model", str(model_file), str(tmp_path / "a.tif"),
                 "--out", str(tmp_path / "o.zarr"), "--close-boundaries"])
    assert code == 2
    assert "--close-boundaries is not available with zarr output" in capsys.readouterr().err


def test_existing_closed_map_is_not_overwritten(model_file, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", membranes(np.random.default_rng(0), (60, 60)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_closed.tif").write_bytes(b"earlier")
    code = main(["predict", "--model", str(model_file), str(tmp_path / "a.tif"),
                 "--out", str(out), "--close-boundaries", "--quiet"])
    assert code == 2 and "a_closed.tif already exists" in capsys.readouterr().err
    assert (out / "a_closed.tif").read_bytes() == b"earlier"
    assert not (out / "a_probability.tif").exists()
