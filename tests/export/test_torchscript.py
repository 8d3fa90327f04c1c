"""TorchScript export: the saved file equals PyTorch on shapes it was not traced on; checks refuse."""

import json
import zipfile

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.export.checks import (
    check_tile_shape,
    trace_shape,
)
from biounet.export.torchscript import export_torchscript, read_record
from biounet.geometry import config_halo, min_input_size
from biounet.model.unet import UNet


def make_unet(seed=0, **options):
    torch.manual_seed(seed)
    return UNet(UNetConfig(**{"depth": 2, "base_channels": 4, **options})).eval()


def scores(model, batch):
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"padding": "same", "norm": "batch", "upsampling": "bilinear", "in_channels": 2},
        {"ndim": 3, "depth": 1, "base_channels": 2, "n_classes": 3},
    ],
)
def test_saved_file_equals_pytorch_on_untraced_shapes(options, tmp_path, rng):
    model = make_unet(**options)
    path = export_torchscript(model, tmp_path / "unet.pt")
    loaded = torch.jit.load(str(path))
    config = model.config
    smallest, step = min_input_size(depth=config.depth, padding=config.padding), 2**config.depth
    traced = trace_shape(config)
    for batch_size, shape in [
        (3, (smallest,) * config.ndim),
        (1, tuple(s + step * 3 for s in traced)),
    ]:
        batch = rng.random((batch_size, config.in_channels, *shape), dtype=np.float32)
        with torch.no_grad():
            exported = loaded(torch.from_numpy(batch)).numpy()
        expected = scores(model, batch)
        assert exported.shape == expected.shape
        np.testing.assert_allclose(exported, expected, rtol=0, atol=1e-5)


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = make_unet().train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    export_torchscript(model, tmp_path / "unet.pt", tile_shape=(64, 60))
    assert model.training
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


class ShapeDependentUNet(UNet):
    """Python control flow on the input size: a trace silently freezes one branch."""

    def forward(self, image):
        result = super().forward(image)
        if image.shape[-1] != trace_shape(self.config)[-1]:
            result = result.flip(1)  # swaps the classes, changing the probabilities
        return result


def test_a_trace_that_does_not_generalise_is_refused_and_not_written(tmp_path):
    torch.manual_seed(0)
    model = ShapeDependentUNet(UNetConfig(depth=2, base_channels=4)).eval()
    with pytest.raises(ValueError, match="TorchScript export disagrees with PyTorch"):
        export_torchscript(model, tmp_path / "unet.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("tile_shape", "message"),
    [((50, 60), r"Y = 50 is not a valid input size of this network; nearest valid sizes along Y are 48 and 52"),
     ((60,), "needs 2 sizes")],
)
def test_invalid_tile_shape(tile_shape, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        check_tile_shape(UNetConfig(depth=2), tile_shape)
    with pytest.raises(ValueError, match=message):
        export_torchscript(make_unet(), tmp_path / "unet.pt", tile_shape=tile_shape)


def test_existing_output_needs_overwrite(tmp_path):
    target = tmp_path / "unet.pt"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_torchscript(make_unet(), target)
    assert target.read_bytes() == b"keep"
    export_torchscript(make_unet(), target, overwrite=True)
    assert torch.jit.load(str(target)) is not None


def test_an_anisotropic_network_exports_with_its_own_z_sizes(tmp_path, rng):
    model = make_unet(ndim=3, base_channels=2, pool_z=(False, True))
    # Z pools once (step 2, minimum 26), Y and X twice (step 4, minimum 44).
    assert trace_shape(model.config) == (30, 56, 60)
    loaded = torch.jit.load(str(export_torchscript(model, tmp_path / "unet.pt")))
    for shape in [(26, 44, 44), (28, 48, 52), (34, 44, 60)]:
        batch = rng.random((2, 1, *shape), dtype=np.float32)
        with torch.no_grad():
            exported = loaded(torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(exported, scores(model, batch), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"tile_shape \(27, 44, 44\): Z = 27 is not a valid input size of this network; nearest valid sizes along Z are 26 and 28"):
        export_torchscript(model, tmp_path / "bad.pt", tile_shape=(27, 44, 44))
    assert not (tmp_path / "bad.pt").exists()


def test_the_record_holds_config_geometry_and_preprocessing_and_torch_reads_the_same(tmp_path):
    model = make_unet(ndim=3, depth=2, base_channels=2, pool_z=(False, True))
    preprocessing = {"normalization": "zscore", "polarity": "bright_objects"}
    path = export_torchscript(model, tmp_path / "unet.pt", preprocessing=preprocessing)
    record = read_record(path)
    assert UNetConfig.from_dict(record["biounet_config"]) == model.config
    assert record["halo"] == list(config_halo(model.config))
    assert record["halo"][0] != record["halo"][1]  # per axis, not one number
    assert record["normalization"] == "zscore" and record["polarity"] == "bright_objects"
    # torch's own reader (which runs the file's code) finds the same text
    extra = {"biounet.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["biounet.json"]) == record


def test_without_preprocessing_the_record_has_geometry_only(tmp_path):
    record = read_record(export_torchscript(make_unet(), tmp_path / "unet.pt"))
    assert "biounet_config" in record and "normalization" not in record


def test_read_record_refuses_what_is_not_torchscript_and_tolerates_a_bare_file(tmp_path):
    text = tmp_path / "weights.pt"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match=r"weights\.pt is not a readable TorchScript file"):
        read_record(text)
    with pytest.raises(FileNotFoundError, match="TorchScript file .*missing.pt does not exist"):
        read_record(tmp_path / "missing.pt")
    checkpoint = tmp_path / "checkpoint.pt"  # a zip too, without code
    torch.save({"weight": torch.zeros(2)}, checkpoint)
    with pytest.raises(ValueError, match=r"checkpoint\.pt is not a TorchScript file"):
        read_record(checkpoint)
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.trace(make_unet(), torch.zeros(1, 1, 44, 44)), str(bare))
    assert read_record(bare) == {}


def _rewritten(source, target, members):
    """Copy the zip `source` to `target` with `members` ({name: bytes}) added or replaced."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for name in original.namelist():
            if name not in members:
                copy.writestr(name, original.read(name))
        for name, data in members.items():
            copy.writestr(name, data)
    return target


def test_read_record_takes_only_the_top_level_record(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.trace(make_unet(), torch.zeros(1, 1, 44, 44)), str(bare))
    with zipfile.ZipFile(bare) as archive:
        top = archive.namelist()[0].split("/")[0]
    nested = {f"{top}/code/x/extra/biounet.json": b'{"halo": [0, 0]}'}
    assert read_record(_rewritten(bare, tmp_path / "nested.pt", nested)) == {}
    for index, data in enumerate([b"\xff\xfe", b"[1, 2]", b'"text"', b'{"halo": NaN}']):
        damaged = _rewritten(bare, tmp_path / f"d{index}.pt", {f"{top}/extra/biounet.json": data})
        with pytest.raises(ValueError, match=r"its biounet\.json is not a JSON object"):
            read_record(damaged)


def test_the_record_states_scores_and_refuses_unknown_preprocessing(tmp_path):
    record = read_record(export_torchscript(make_unet(), tmp_path / "unet.pt"))
    assert record["biounet_output"] == "scores"
    with pytest.raises(ValueError, match=r"preprocessing must name only .*got \['halo'\]"):
        export_torchscript(make_unet(), tmp_path / "b.pt", preprocessing={"halo": "0"})
    with pytest.raises(ValueError, match="preprocessing normalization must be one of"):
        export_torchscript(make_unet(), tmp_path / "b.pt", preprocessing={"normalization": "x"})
    assert not (tmp_path / "b.pt").exists()
