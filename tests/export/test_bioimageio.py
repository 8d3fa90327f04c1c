"""bioimage.io package: validates offline, its weights reproduce the test tensors, tiles by
the declared halo like biounet, and imports back exactly."""

import contextlib
import io
import socket
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import biounet
from biounet.config import UNetConfig
from biounet.inference.predict import predict_tiled
from biounet.model.unet import UNet

pytest.importorskip("bioimageio.spec")
ort = pytest.importorskip("onnxruntime")

from biounet.export.bioimageio import (  # noqa: E402
    PackageInfo,
    default_test_shape,
    export_bioimageio,
    is_bioimageio_package,
    load_bioimageio_package,
    make_test_input,
)


@contextlib.contextmanager
def no_network():
    """Fail any connection or name lookup, and record the attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield attempts


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    path = tmp_path_factory.mktemp("bioimageio") / "unet.zip"
    info = PackageInfo(name="tiny test U-Net", authors=("A. Author", "B. Author"))
    with no_network() as attempts:
        export_bioimageio(model, path, info=info, onnx_exporter="legacy")
    assert attempts == []
    return model, path


def read_member(path, name):
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def test_package_validates_offline(package):
    from bioimageio.spec import load_description

    _, path = package
    with no_network() as attempts:
        description = load_description(path, perform_io_checks=True)
    assert attempts == []
    summary = description.validation_summary
    assert summary.status == "valid-format", summary.format()
    assert str(description.format_version).startswith("0.5.")
    assert {"torchscript", "onnx"} <= {name for name, entry in description.weights if entry}


def test_description_states_halo_sizes_and_citation(package):
    _, path = package
    rdf = yaml.safe_load(read_member(path, "rdf.yaml"))
    image_axes = rdf["inputs"][0]["axes"]
    assert [axis["size"] for axis in image_axes[2:]] == [{"min": 44, "step": 4}] * 2
    output_axes = rdf["outputs"][0]["axes"]
    assert [axis["halo"] for axis in output_axes[2:]] == [20, 20]
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    assert rdf["license"] == "MIT"
    assert [author["name"] for author in rdf["authors"]] == ["A. Author", "B. Author"]
    assert "pytorch_state_dict" not in rdf["weights"]
    assert rdf["config"]["biounet"]["weights"] == "biounet.safetensors"
    assert "Validation" in read_member(path, "README.md").decode()
    cover = Image.open(io.BytesIO(read_member(path, "cover.png")))
    assert cover.size[0] == 2 * cover.size[1]


def test_weights_reproduce_the_test_tensors(package):
    model, path = package
    test_input = np.load(io.BytesIO(read_member(path, "test_input.npy")))
    test_output = np.load(io.BytesIO(read_member(path, "test_output.npy")))
    assert test_input.shape == (1, 1, *default_test_shape(model.config))
    assert test_output.shape == (1, 2, *test_input.shape[2:])
    margin = 20
    inner = (slice(None), slice(None), slice(margin, -margin), slice(margin, -margin))
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(test_input)), dim=1).numpy()
    np.testing.assert_allclose(test_output[inner], expected, rtol=0, atol=1e-6)
    border = np.ones(test_output.shape, dtype=bool)
    border[inner] = False
    assert np.all(test_output[border] == 0)  # the halo is zero, to be cropped
    session = ort.InferenceSession(read_member(path, "weights.onnx"))
    onnx_output = session.run(None, {"image": test_input})[0]
    np.testing.assert_allclose(onnx_output, test_output, rtol=0, atol=1e-4)
    scripted = torch.jit.load(io.BytesIO(read_member(path, "weights_torchscript.pt")))
    with torch.no_grad():
        script_output = scripted(torch.from_numpy(test_input)).numpy()
    np.testing.assert_allclose(script_output, test_output, rtol=0, atol=1e-4)


def test_tiling_by_the_declared_halo_equals_biounet(package, rng):
    """A consumer pads a tile by the halo (mirroring), runs it and crops the halo."""
    model, path = package
    image = rng.random((40, 36), dtype=np.float32)  # + 2 * 20 gives valid sizes 80, 76
    padded = np.pad(image, 20, mode="reflect")[None, None]
    session = ort.InferenceSession(read_member(path, "weights.onnx"))
    consumer = session.run(None, {"image": padded})[0][0, :, 20:-20, 20:-20]
    np.testing.assert_allclose(consumer, predict_tiled(model, image), rtol=0, atol=1e-4)


def test_package_imports_back_exactly(package, tmp_path):
    model, path = package
    assert is_bioimageio_package(path)
    torch.save(model.state_dict(), tmp_path / "state.pt")  # a zip, but no package
    assert not is_bioimageio_package(tmp_path / "state.pt")
    assert not is_bioimageio_package(tmp_path / "missing.zip")
    loaded = load_bioimageio_package(path)
    assert loaded.config == model.config and not loaded.training
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    via_load_model = biounet.load_model(path)  # the public loader accepts packages too
    assert via_load_model.config == model.config and not via_load_model.training
    assert all(
        torch.equal(tensor, expected[name]) for name, tensor in via_load_model.state_dict().items()
    )


def test_import_refuses_other_files(package, tmp_path):
    _, path = package
    with pytest.raises(FileNotFoundError):
        load_bioimageio_package(tmp_path / "missing.zip")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="not a zip"):
        load_bioimageio_package(tmp_path / "text.zip")
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nname: someone else's model\n")
    with pytest.raises(ValueError, match="not written by biounet"):
        load_bioimageio_package(foreign)
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tampered, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "biounet.safetensors":
                data = data[:-4] + bytes(4)  # zero the last weights
            target.writestr(name, data)
    with pytest.raises(ValueError, match="checksum"):
        load_bioimageio_package(tampered)


def test_make_test_input_crops_the_centre_to_a_valid_tile(rng):
    config = UNetConfig(depth=2)
    image = rng.random((70, 53), dtype=np.float32)
    test_input = make_test_input(config, test_image=image)
    assert default_test_shape(config) == (56, 56)
    assert test_input.shape == (1, 1, 56, 52)  # largest valid sizes within 56 and the image
    np.testing.assert_array_equal(test_input[0, 0], image[7:63, 0:52])
    with pytest.raises(ValueError, match="smaller than the smallest valid input 44"):
        make_test_input(config, test_image=image[:40])
    with pytest.raises(ValueError, match="larger than test_image"):
        make_test_input(config, test_image=image, tile_shape=(72, 48))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"normalization": "minmax"}, "normalization must be one of"),
        ({"authors": ()}, "authors"),
        ({"name": "bad/name"}, "name must be 5-128"),
    ],
)
def test_package_info_is_checked(options, message):
    with pytest.raises(ValueError, match=message):
        PackageInfo(**options)


def test_unknown_licence_is_refused_before_exporting(tmp_path):
    model = UNet(UNetConfig(depth=2, base_channels=4))
    info = PackageInfo(license="not-a-licence")
    with pytest.raises(ValueError, match="'not-a-licence' is not an SPDX licence identifier"):
        export_bioimageio(model, tmp_path / "unet.zip", info=info)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    target = tmp_path / "unet.zip"
    target.write_bytes(b"keep")
    model = UNet(UNetConfig(depth=2, base_channels=4))
    with pytest.raises(FileExistsError, match="overwrite"):
        export_bioimageio(model, target)
    assert target.read_bytes() == b"keep"


def test_a_boundary_class_package_names_its_classes_and_keeps_the_flag(tmp_path):
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=1, base_channels=2, n_classes=3, boundary_class=True)).eval()
    path = tmp_path / "boundary.zip"
    with no_network():
        export_bioimageio(model, path, info=PackageInfo(name="boundary U-Net"), onnx_exporter="legacy")
    rdf = yaml.safe_load(read_member(path, "rdf.yaml"))
    channel = next(axis for axis in rdf["outputs"][0]["axes"] if axis.get("type") == "channel")
    assert channel["channel_names"] == ["background", "interior", "boundary"]
    assert load_bioimageio_package(path).config.boundary_class


def test_an_anisotropic_package_states_z_sizes_and_halo_and_tiles_exactly(tmp_path, rng):
    from bioimageio.spec import load_description

    torch.manual_seed(0)
    model = UNet(UNetConfig(ndim=3, depth=2, base_channels=2, pool_z=(False, True))).eval()
    path = tmp_path / "aniso.zip"
    with no_network():
        export_bioimageio(model, path, info=PackageInfo(name="anisotropic U-Net"), onnx_exporter="legacy")
        description = load_description(path, perform_io_checks=True)
    assert description.validation_summary.status == "valid-format", description.validation_summary.format()
    rdf = yaml.safe_load(read_member(path, "rdf.yaml"))
    sizes = [axis["size"] for axis in rdf["inputs"][0]["axes"][2:]]
    assert sizes == [{"min": 26, "step": 2}, {"min": 44, "step": 4}, {"min": 44, "step": 4}]
    assert [axis["halo"] for axis in rdf["outputs"][0]["axes"][2:]] == [12, 20, 20]
    assert rdf["config"]["biounet"]["halo"] == [12, 20, 20]
    readme = read_member(path, "README.md").decode()
    assert "(26 + 2 n, 44 + 4 n, 44 + 4 n)" in readme and "12, 20, 20 px (z, y, x) per side" in readme
    assert np.load(io.BytesIO(read_member(path, "test_input.npy"))).shape == (1, 1, 32, 56, 56)
    # A consumer pads by each axis's halo, runs the ONNX weights and crops the halo.
    image = rng.random((6, 8, 12), dtype=np.float32)  # padded: 30, 48, 52, all valid
    padded = np.pad(image, [(12, 12), (20, 20), (20, 20)], mode="reflect")[None, None]
    session = ort.InferenceSession(read_member(path, "weights.onnx"))
    consumer = session.run(None, {"image": padded})[0][0, :, 12:-12, 20:-20, 20:-20]
    np.testing.assert_allclose(consumer, predict_tiled(model, image), rtol=0, atol=1e-4)
    assert load_bioimageio_package(path).config == model.config
