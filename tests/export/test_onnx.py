"""ONNX export: ONNX Runtime equals PyTorch on any valid shape; tiled ORT equals whole-image torch."""

import json
import sys

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.export.checks import trace_shape
from biounet.geometry import min_input_size
from biounet.inference.predict import predict_tiled
from biounet.model.unet import UNet

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from biounet.export.onnx import export_onnx, require  # noqa: E402
from biounet.export.onnx_runtime import OnnxRuntimeBackend, load_onnx_backend  # noqa: E402


def make_unet(**options):
    torch.manual_seed(0)
    return UNet(UNetConfig(**{"depth": 2, "base_channels": 4, **options})).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Models exported by each exporter; dynamo gets depth 1, as it takes 10 s even so."""
    folder = tmp_path_factory.mktemp("onnx")
    models = {"dynamo": make_unet(depth=1, base_channels=2), "legacy": make_unet()}
    paths = {
        exporter: export_onnx(model, folder / f"{exporter}.onnx", exporter=exporter)
        for exporter, model in models.items()
    }
    return models, paths


def run_onnx(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": batch})[0]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_onnx_runtime_equals_pytorch_on_any_valid_shape(exported, exporter, rng):
    models, paths = exported
    model = models[exporter]
    smallest = min_input_size(depth=model.config.depth)
    # the smallest input, untraced shapes, batch sizes 1 and 3, non-square tiles
    for batch_size, shape in [(1, (smallest, smallest)), (3, (76, 48)), (1, (120, 100))]:
        batch = rng.random((batch_size, 1, *shape), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        actual = run_onnx(paths[exporter], batch)
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_axes_and_metadata(exported, exporter):
    models, paths = exported
    config = models[exporter].config
    proto = onnx.load(str(paths[exporter]))
    assert proto.opset_import[0].version == 18
    image = proto.graph.input[0]
    assert image.name == "image" and proto.graph.output[0].name == "scores"
    dims = image.type.tensor_type.shape.dim
    assert [dim.dim_value for dim in dims][1] == 1  # channels fixed
    assert all(dims[axis].dim_param for axis in (0, 2, 3))  # batch, Y, X dynamic
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert UNetConfig.from_dict(json.loads(metadata["biounet_config"])) == config
    expected = {2: ("20", "44", "4"), 1: ("8", "18", "2")}[config.depth]
    assert (metadata["halo"], metadata["min_input_size"], metadata["input_size_step"]) == expected
    assert metadata["biounet_output"] == "scores"


def test_tiled_onnx_runtime_equals_whole_image_pytorch(exported, rng):
    models, paths = exported
    model = models["legacy"]
    backend = OnnxRuntimeBackend(paths["legacy"], n_threads=1)
    assert backend.config == model.config
    image = rng.random((97, 130), dtype=np.float32)
    whole = predict_tiled(model, image, tile_shape="whole")
    for tile_shape, batch_size in [((60, 64), 3), ((48, 92), 1)]:
        tiled = predict_tiled(backend, image, tile_shape=tile_shape, batch_size=batch_size)
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)


def test_load_onnx_backend_runs_onnx_files_and_exports_weight_files(exported, tmp_path, rng):
    from biounet.weightfile import save_model

    _, paths = exported
    assert isinstance(load_onnx_backend(paths["legacy"], n_threads=1), OnnxRuntimeBackend)
    model = make_unet(depth=1, base_channels=2)
    weights = save_model(model, tmp_path / "model.safetensors")
    backend = load_onnx_backend(weights, n_threads=1)  # exported on the fly, then checked
    assert backend.config == model.config
    image = rng.random((50, 43), dtype=np.float32)
    np.testing.assert_allclose(
        predict_tiled(backend, image, tile_shape=(26, 30)), predict_tiled(model, image),
        rtol=0, atol=1e-4,
    )
    assert list(tmp_path.iterdir()) == [weights]  # no ONNX file left behind


def test_three_d_and_variants_export(tmp_path, rng):
    model = make_unet(ndim=3, depth=1, base_channels=2, norm="instance", upsampling="bilinear")
    path = export_onnx(model, tmp_path / "unet3d.onnx", exporter="legacy", tile_shape=(18, 20, 24))
    batch = rng.random((2, 1, 20, 18, 28), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(run_onnx(path, batch), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_an_anisotropic_network_states_its_z_geometry(exporter, tmp_path, rng):
    model = make_unet(ndim=3, depth=2 if exporter == "legacy" else 1, base_channels=2,
                      pool_z=(False, True) if exporter == "legacy" else (False,))
    path = export_onnx(model, tmp_path / "aniso.onnx", exporter=exporter)
    shape = (28, 48, 52) if exporter == "legacy" else (14, 18, 20)  # untraced sizes
    batch = rng.random((1, 1, *shape), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(run_onnx(path, batch), expected, rtol=0, atol=1e-4)
    metadata = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    expected_metadata = {"legacy": ("12,20,20", "26,44,44", "2,4,4"), "dynamo": ("6,8,8", "13,18,18", "1,2,2")}
    assert (metadata["halo"], metadata["min_input_size"], metadata["input_size_step"]) == expected_metadata[exporter]


class ShapeDependentUNet(UNet):
    def forward(self, image):
        result = super().forward(image)
        if image.shape[-1] != trace_shape(self.config)[-1]:
            result = result.flip(1)
        return result


def test_a_wrong_export_is_refused_and_not_written(tmp_path):
    torch.manual_seed(0)
    model = ShapeDependentUNet(UNetConfig(depth=2, base_channels=4)).eval()
    with pytest.raises(ValueError, match="ONNX export disagrees with PyTorch"):
        export_onnx(model, tmp_path / "unet.onnx", exporter="legacy")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"opset": 9}, "opset must be an integer >= 14"),
        ({"opset": 99}, "newer than the installed onnx"),
        ({"exporter": "jit"}, "exporter must be one of"),
        ({"tile_shape": (50, 50)}, "nearest valid sizes along Y are 48 and 52"),
    ],
)
def test_bad_options(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        export_onnx(make_unet(), tmp_path / "unet.onnx", **options)


def test_existing_output_needs_overwrite(tmp_path):
    target = tmp_path / "unet.onnx"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(make_unet(), target, exporter="legacy")
    assert target.read_bytes() == b"keep"


def test_backend_refuses_files_that_are_not_biounet_scores(exported, tmp_path):
    _, paths = exported
    proto = onnx.load(str(paths["legacy"]))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(ValueError, match="not a biounet export of class scores"):
        OnnxRuntimeBackend(foreign)
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot be loaded"):
        OnnxRuntimeBackend(tmp_path / "garbage.onnx")
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")


def test_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'biounet\[export\]'"):
        require("onnxruntime", "checking the ONNX export")


def test_a_boundary_class_network_stays_one_after_export(tmp_path):
    model = make_unet(depth=1, base_channels=2, n_classes=3, boundary_class=True)
    path = export_onnx(model, tmp_path / "b.onnx", exporter="legacy")
    backend = load_onnx_backend(path, n_threads=1)
    assert backend.config.boundary_class and backend.config == model.config


def test_unknown_preprocessing_is_refused_before_the_export(tmp_path):
    with pytest.raises(ValueError, match="preprocessing polarity must be one of"):
        export_onnx(make_unet(), tmp_path / "m.onnx", preprocessing={"polarity": "dark"})
    assert not (tmp_path / "m.onnx").exists()
