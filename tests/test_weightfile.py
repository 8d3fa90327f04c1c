"""Weight files: round trip, and every way a file can be wrong is refused without unpickling."""

import json
import pickle

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.inference.predict import predict_tiled
from biounet.model.unet import UNet
from biounet.weightfile import import_state_dict, load_model, save_model


def test_round_trip_gives_identical_outputs(tiny_unet, tmp_path, rng):
    path = save_model(tiny_unet, tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert loaded.config == tiny_unet.config
    image = rng.random((90, 70), dtype=np.float32)
    np.testing.assert_array_equal(predict_tiled(loaded, image), predict_tiled(tiny_unet, image))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "no temporary left"


def test_batchnorm_statistics_survive(tmp_path):
    model = UNet(UNetConfig(depth=1, base_channels=4, norm="batch"))
    with torch.no_grad():
        model(torch.rand(2, 1, 40, 40) + 5)
    loaded = load_model(save_model(model, tmp_path / "bn.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


class Exploit:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_files_are_refused_unread(tmp_path, capsys):
    zip_checkpoint = tmp_path / "model.pt"
    torch.save({"state": Exploit()}, zip_checkpoint)
    raw_pickle = tmp_path / "model.pkl"
    raw_pickle.write_bytes(pickle.dumps(Exploit()))
    for path in (zip_checkpoint, raw_pickle):
        with pytest.raises(ValueError, match="never unpickles"):
            load_model(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_damaged_files_are_refused(tiny_unet, tmp_path):
    path = save_model(tiny_unet, tmp_path / "model.safetensors")
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(tmp_path / "truncated.safetensors")
    tampered = bytearray(data)
    tampered[-3] ^= 0x10
    (tmp_path / "tampered.safetensors").write_bytes(bytes(tampered))
    with pytest.raises(ValueError, match="checksum"):
        load_model(tmp_path / "tampered.safetensors")
    (tmp_path / "text.safetensors").write_text("hello, not weights")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(tmp_path / "text.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_model(tmp_path / "empty.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="folder"):
        load_model(tmp_path)


def test_foreign_safetensors_and_wrong_architecture(tiny_unet, tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_model(tiny_unet, tmp_path / "model.safetensors")
    tensors = load_file(str(path))
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="without a biounet config"):
        load_model(tmp_path / "bare.safetensors")
    other = UNet(UNetConfig(depth=3, base_channels=8))
    header = {"format": "biounet", "format_version": "1", "config": tiny_unet.config.to_json()}
    from biounet.weightfile import tensors_checksum

    other_tensors = {k: v.contiguous() for k, v in other.state_dict().items()}
    header["sha256"] = tensors_checksum(other_tensors)
    save_file(other_tensors, str(tmp_path / "mixed.safetensors"), metadata=header)
    with pytest.raises(ValueError, match="does not fit the architecture"):
        load_model(tmp_path / "mixed.safetensors")
    header["config"] = json.dumps({"depth": 3, "wings": 2})
    save_file(other_tensors, str(tmp_path / "badconfig.safetensors"), metadata=header)
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        load_model(tmp_path / "badconfig.safetensors")


def test_import_state_dict_uses_weights_only(tiny_unet, tmp_path):
    torch.save({"model_state": tiny_unet.state_dict()}, tmp_path / "foreign.pt")
    model = import_state_dict(tmp_path / "foreign.pt", tiny_unet.config, key="model_state")
    for key, value in tiny_unet.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])
    torch.save({"model_state": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        import_state_dict(tmp_path / "evil.pt", tiny_unet.config, key="model_state")
