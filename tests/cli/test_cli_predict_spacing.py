"""`biounet predict --instances` on volumes: distance seeds measured with --spacing, or else
with the voxel size the TIFF states."""

import numpy as np
import pytest
import tifffile
import torch

from biounet.cli import main
from biounet.data.calibration import Calibration, read_calibration, voxel_spacing


@pytest.fixture
def nuclei_volume(tmp_path, monkeypatch):
    """A 3-D model whose 'prediction' is two balls 4 sections apart on 4x coarser
    sections: one slab in voxels, two nuclei in space."""
    import biounet.inference.ensemble as ensemble
    from biounet.config import UNetConfig
    from biounet.model.unet import UNet
    from biounet.weightfile import save_model

    z, y, x = np.mgrid[0:16, 0:32, 0:32].astype(float)
    nuclei = np.zeros(z.shape, np.float32)
    for centre in (5.5, 9.5):
        nuclei[((z - centre) * 4) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 100] = 1

    def nuclei_map(models, image, **options):
        foreground = np.clip(nuclei, 0.05, 0.95)
        return np.stack([1 - foreground, foreground])

    monkeypatch.setattr(ensemble, "predict_ensemble", nuclei_map)
    torch.manual_seed(0)
    model = UNet(UNetConfig(ndim=3, depth=1, base_channels=2)).eval()
    return save_model(model, tmp_path / "v.safetensors"), (nuclei * 200).astype(np.uint8)


def test_spacing_reaches_the_instances_of_a_volume(nuclei_volume, tmp_path, capsys):
    model_file, volume = nuclei_volume
    tifffile.imwrite(tmp_path / "v.tif", volume, photometric="minisblack")
    common = ["predict", "--model", str(model_file), str(tmp_path / "v.tif"), "--quiet", "--instances"]
    counts = {}
    for spacing in ([], ["--spacing", "4", "1", "1"]):
        out = tmp_path / f"out{len(spacing)}"
        assert main([*common, "--out", str(out), *spacing]) == 0
        counts[len(spacing)] = int(tifffile.imread(out / "v_instances.tif").max())
    assert counts == {0: 1, 4: 2}
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--spacing", "4", "1"]) == 2
    assert capsys.readouterr().err.strip() == "biounet predict: error: --spacing needs 3 values for this 3-D model, got [4.0, 1.0]"
    assert main([*common, "--out", str(tmp_path / "bad"), "--spacing", "4", "0", "1"]) == 2
    assert capsys.readouterr().err.strip() == "biounet predict: error: --spacing must be finite and > 0 on every axis, got [4.0, 0.0, 1.0]"
    assert main([*common[:-1], "--out", str(tmp_path / "bad"), "--spacing", "4", "1", "1"]) == 2
    assert "--spacing: post-processing options of --instances; add --instances" in capsys.readouterr().err
    for other in (["--no-watershed"], ["--seeds", "probability"]):
        assert main([*common, "--out", str(tmp_path / "bad"), "--spacing", "4", "1", "1", *other]) == 2
        used = "--no-watershed" if other == ["--no-watershed"] else "probability seeds"
        assert capsys.readouterr().err.strip() == (
            f"biounet predict: error: --spacing measures the distance seeds of the watershed; this run uses {used}: "
            "drop --spacing or use --seeds distance")
    assert not (tmp_path / "bad").exists()


def test_the_stated_voxel_size_splits_what_voxels_merge(nuclei_volume, tmp_path, caplog):
    model_file, volume = nuclei_volume
    # 0.5 µm pixels, 2 µm sections: ImageJ's calibration and OME's
    tifffile.imwrite(tmp_path / "imagej.tif", volume, imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "um", "spacing": 2.0, "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "ome.ome.tif", volume, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0})
    tifffile.imwrite(tmp_path / "plain.tif", volume, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_file), str(tmp_path / "imagej.tif"), str(tmp_path / "ome.ome.tif"),
                 str(tmp_path / "plain.tif"), "--out", str(out), "--quiet", "--instances"]) == 0
    counts = {name: int(tifffile.imread(out / f"{name}_instances.tif").max()) for name in ("imagej", "ome.ome", "plain")}
    assert counts == {"imagej": 2, "ome.ome": 2, "plain": 1}
    said = [record.getMessage() for record in caplog.records if "from its calibration" in record.getMessage()]
    assert len(said) == 2 and all("--spacing 4 1 1" in line for line in said)
    # a given --spacing wins over the file's
    again = tmp_path / "again"
    assert main(["predict", "--model", str(model_file), str(tmp_path / "imagej.tif"), "--out", str(again),
                 "--quiet", "--instances", "--spacing", "1", "1", "1"]) == 0
    assert int(tifffile.imread(again / "imagej_instances.tif").max()) == 1
    # other seeds do not measure distances: the calibration is left alone, not refused
    other = tmp_path / "other"
    assert main(["predict", "--model", str(model_file), str(tmp_path / "imagej.tif"), "--out", str(other),
                 "--quiet", "--instances", "--no-watershed"]) == 0
    assert int(tifffile.imread(other / "imagej_instances.tif").max()) == 1
    # a Z step beside pixels of an unknown length is said, and voxels stay cubes
    tifffile.imwrite(tmp_path / "z_only.tif", volume, imagej=True, resolution=(2.0, 2.0), resolutionunit=3,
                     metadata={"unit": "parsec?", "spacing": 2.0, "axes": "ZYX"})
    caplog.clear()
    assert main(["predict", "--model", str(model_file), str(tmp_path / "z_only.tif"), "--out", str(other),
                 "--quiet", "--instances"]) == 0
    assert int(tifffile.imread(other / "z_only_instances.tif").max()) == 1
    assert any("states a Z step but no pixel size" in record.getMessage() for record in caplog.records)


def test_voxel_spacing_needs_one_unit_and_a_non_cube(tmp_path):
    def stack(**calibration):
        return voxel_spacing(Calibration(**calibration))

    assert stack(resolution=(200.0, 100.0), resolution_unit=1, unit="um", spacing=0.04) == (8.0, 2.0, 1.0)
    assert stack(resolution=(200.0, 200.0), resolution_unit=None, spacing=0.005) == (1.0, 1.0, 1.0)
    # 2000 pixels per cm are 5 µm; 40 µm sections (or 0.004 cm) are 8 of them
    for unit, step in (("um", 40.0), ("micron", 40.0), ("cm", 0.004), ("nm", 40000.0)):
        assert stack(resolution=(2000.0, 2000.0), resolution_unit=3, unit=unit, spacing=step) == pytest.approx((8, 1, 1))
    assert stack(resolution=(2000.0, 2000.0), resolution_unit=3, unit="pixel", spacing=4.0) is None
    assert stack(resolution=(2000.0, 2000.0), resolution_unit=2, unit=None, spacing=4.0) is None
    assert stack(resolution=(200.0, 200.0), resolution_unit=1, unit="um") is None  # no Z step
    assert stack(spacing=0.04) is None and voxel_spacing(None) is None
    tifffile.imwrite(tmp_path / "em.tif", np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(200.0, 200.0),
                     metadata={"unit": "um", "spacing": 0.04})
    assert voxel_spacing(read_calibration(tmp_path / "em.tif")) == pytest.approx((8.0, 1.0, 1.0))
