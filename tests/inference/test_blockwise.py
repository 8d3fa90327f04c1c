"""Out-of-core blockwise prediction equals in-memory prediction, resumes, and runs on dask."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
import zarr

from biounet.config import UNetConfig
from biounet.data.normalize import normalize_percentile, normalize_zscore
from biounet.inference.blockwise import RECORD_KEY, predict_blockwise
from biounet.inference.blockwise_executors import _make_executor
from biounet.inference.blockwise_normalization import _make_normalizer
from biounet.inference.blockwise_source import _open_source
from biounet.inference.order_keys import order_keys
from biounet.inference.predict import predict_tiled
from biounet.model.unet import UNet


def make_model(**options) -> UNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return UNet(UNetConfig(**{"depth": 2, "base_channels": 4, **options})).eval()


def as_zarr(path, image, chunks):
    array = zarr.create_array(
        store=str(path), shape=image.shape, chunks=chunks, dtype=image.dtype, overwrite=True
    )
    array[...] = image
    return array


def done_blocks(array) -> list[int]:
    return dict(array.attrs)[RECORD_KEY]["done"]


@pytest.mark.parametrize(
    ("options", "image_shape", "tile_shape", "block_shape"),
    [
        ({}, (300, 400), (76, 92), (128, 128)),  # blocks 144 x 104: neither divides the image
        ({}, (300, 400), (124, 60), (100, 250)),
        ({"in_channels": 2, "n_classes": 3}, (2, 211, 333), (64, 80), (96, 96)),
        ({"padding": "same"}, (259, 301), (64, 64), (100, 100)),
        ({"ndim": 3, "depth": 1, "base_channels": 2}, (21, 45, 38), (26, 30, 26), (20, 20, 20)),
    ],
)
def test_blockwise_equals_in_memory(options, image_shape, tile_shape, block_shape, rng, tmp_path):
    model = make_model(**options)
    image = rng.random(image_shape, dtype=np.float32)
    source = as_zarr(tmp_path / "source.zarr", image, chunks=(64,) * len(image_shape))
    output = predict_blockwise(
        model, source, tmp_path / "out.zarr", tile_shape=tile_shape, block_shape=block_shape
    )
    expected = predict_tiled(model, image, tile_shape=tile_shape)
    assert output.shape == expected.shape and output.dtype == np.float32
    assert output.chunks[0] == model.config.n_classes
    assert all(chunk < size for chunk, size in zip(output.chunks[1:], expected.shape[1:]))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)


def test_blockwise_equals_whole_image_pass_with_chosen_tiles(rng, tmp_path):
    model = make_model()
    image = rng.random((230, 317), dtype=np.float32)
    budget = 2**20  # forces tiles far smaller than the image
    output = predict_blockwise(
        model, image, tmp_path / "out.zarr", memory_budget=budget, block_shape=(64, 64)
    )
    assert len(done_blocks(output)) > 4
    np.testing.assert_allclose(
        output[...], predict_tiled(model, image, tile_shape="whole"), rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        output[...], predict_tiled(model, image, memory_budget=budget), rtol=0, atol=1e-5
    )


def test_interrupted_run_resumes_without_recomputing(rng, tmp_path):
    model = make_model()
    image = rng.random((300, 400), dtype=np.float32)
    state = {"calls": 0, "fail_at": 3}

    def counting(window):  # called once per block
        state["calls"] += 1
        if state["calls"] == state["fail_at"]:
            raise RuntimeError("interrupted")
        return window

    options = {"tile_shape": (76, 92), "block_shape": (144, 104), "normalization": counting}
    target = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="interrupted"):
        predict_blockwise(model, image, target, scheduler="synchronous", **options)
    partial = zarr.open_array(str(target))
    assert len(done_blocks(partial)) == 2
    for flat in range(12):
        row, column = divmod(flat, 4)
        block = partial[:, row * 144 : (row + 1) * 144, column * 104 : (column + 1) * 104]
        assert np.isnan(block).all() != (flat in done_blocks(partial))

    state.update(calls=0, fail_at=None)
    output = predict_blockwise(model, image, target, **options)
    n_blocks = 3 * 4
    assert state["calls"] == n_blocks - 2
    assert done_blocks(output) == list(range(n_blocks))
    expected = predict_tiled(model, image, tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)

    state["calls"] = 0
    predict_blockwise(model, image, target, **options)
    assert state["calls"] == 0
    predict_blockwise(model, image, target, resume=False, **options)
    assert state["calls"] == n_blocks


def test_resume_refuses_another_prediction(rng, tmp_path):
    model = make_model()
    image = rng.random((150, 170), dtype=np.float32)
    target = tmp_path / "out.zarr"
    predict_blockwise(model, image, target, tile_shape=(76, 92), block_shape=(72, 104))
    with pytest.raises(ValueError, match=r"differing in \['tile_shape'\].*resume=False"):
        predict_blockwise(model, image, target, tile_shape=(76, 144), block_shape=(72, 104))
    with pytest.raises(ValueError, match=r"not whole numbers of the tile step.*resume=False"):
        predict_blockwise(model, image, target, tile_shape=(92, 92))
    other = make_model(base_channels=2)
    with pytest.raises(ValueError, match=r"differing in \['config', 'weights_sha256'\]"):
        predict_blockwise(other, image, target, tile_shape=(76, 92), block_shape=(72, 104))
    output = predict_blockwise(other, image, target, tile_shape=(76, 92), resume=False)
    np.testing.assert_allclose(
        output[...], predict_tiled(other, image, tile_shape=(76, 92)), rtol=0, atol=1e-5
    )


def test_existing_zarr_array_target_sets_the_blocks(rng):
    model = make_model()
    image = rng.random((150, 170), dtype=np.float32)
    target = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=(2, 150, 170), chunks=(1, 72, 52), dtype="f4"
    )
    output = predict_blockwise(model, image, target, tile_shape=(76, 92))
    assert output is target and len(done_blocks(target)) == 3 * 4
    np.testing.assert_allclose(
        target[...], predict_tiled(model, image, tile_shape=(76, 92)), rtol=0, atol=1e-5
    )


def test_model_and_global_random_state_are_untouched(rng, tmp_path):
    model = make_model().train()
    parameters = {name: value.clone() for name, value in model.state_dict().items()}
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()  # noqa: NPY002
    predict_blockwise(model, rng.random((100, 100), dtype=np.float32), tmp_path / "out.zarr")
    assert model.training
    assert all(torch.equal(value, parameters[name]) for name, value in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002


@pytest.mark.parametrize("opened", [False, True])
def test_tiff_source_is_read_lazily(opened, rng, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    model = make_model()
    image = rng.integers(0, 50, (300, 257), dtype=np.uint8)
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, image, tile=(64, 64))
    store = tifffile.imread(path, aszarr=True) if opened else None
    source = zarr.open(store, mode="r") if opened else path
    output = predict_blockwise(model, source, tmp_path / "out.zarr", tile_shape=(76, 92))
    if store is not None:
        store.close()
    expected = predict_tiled(model, image, tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["0.4", "0.5"])
def test_ome_zarr_source_uses_level_zero_and_keeps_its_scale(layout, rng, tmp_path):
    model = make_model(in_channels=2)
    image = rng.random((2, 120, 90), dtype=np.float32)
    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    group.create_array("0", shape=image.shape, chunks=(2, 64, 64), dtype="f4")[...] = image
    group.create_array("1", shape=(2, 60, 45), dtype="f4")[...] = image[:, ::2, ::2]
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    scale = {"type": "scale", "scale": [1.0, 0.5, 0.25]}
    multiscales = [
        {
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [scale]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.5]}]},
            ],
        }
    ]
    group.attrs.update({"ome": {"version": "0.5", "multiscales": multiscales}} if layout == "0.5" else {"multiscales": multiscales})
    output = predict_blockwise(model, tmp_path / "image.ome.zarr", tmp_path / "out.zarr", tile_shape=(76, 76))
    np.testing.assert_allclose(
        output[...], predict_tiled(model, image, tile_shape=(76, 76)), rtol=0, atol=1e-5
    )
    assert output.attrs["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 0.5, 0.25]}]
    assert [axis["name"] for axis in output.attrs["axes"]] == ["c", "y", "x"]


def test_percentile_normalization_uses_whole_image_statistics(rng, tmp_path):
    model = make_model(in_channels=2)
    image = rng.integers(0, 4000, (2, 200, 230), dtype=np.uint16)
    image[1] += 20000  # the channels get different statistics
    source = as_zarr(tmp_path / "source.zarr", image, chunks=(1, 64, 64))
    output = predict_blockwise(
        model, source, tmp_path / "out.zarr", tile_shape=(76, 92), normalization="percentile"
    )
    normalized = normalize_percentile(image, axis=(1, 2))
    expected = predict_tiled(model, normalized, tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)


def test_zscore_normalization_uses_whole_image_statistics(rng, tmp_path):
    model = make_model()
    image = (rng.random((200, 230)) * 300 + 1000).astype(np.float32)
    output = predict_blockwise(
        model, image, tmp_path / "out.zarr", tile_shape=(76, 92), normalization="zscore"
    )
    expected = predict_tiled(model, normalize_zscore(image), tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)


def _values_of(dtype, rng, shape):
    """Random values spanning `dtype`, with ties, extremes and (for floats) signed zeros."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.3
    if dtype.kind == "f":
        values = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)
        values = values.astype(dtype)
        flat = values.reshape(-1)
        if flat.size > 40:
            flat[:4] = [-0.0, 0.0, np.finfo(dtype).max, np.finfo(dtype).smallest_subnormal]
            flat[4:40] = flat[40]  # ties
        return values
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    flat = values.reshape(-1)
    if flat.size > 30:
        flat[:2] = [info.min, info.max]
        flat[2:30] = flat[30]
    return values


DTYPES = [bool, np.uint8, np.int8, np.uint16, np.int16, np.float16, np.uint32, np.int32,
          np.float32, np.uint64, np.int64, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_order_keys_sort_as_the_values_do(dtype, rng):
    values = _values_of(dtype, rng, 5000)
    by_key = values[np.argsort(order_keys(values), kind="stable")]
    np.testing.assert_array_equal(by_key, np.sort(values, kind="stable"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 7), (2, 61, 47)])
def test_percentile_statistics_equal_numpy(dtype, shape, rng, monkeypatch):
    """Radix selection over regions gives np.percentile's figures on the whole image."""
    import biounet.inference.blockwise_normalization as module

    monkeypatch.setattr(module, "_REGION_PIXELS", 400)  # 20 x 20 regions: many, ragged
    image = _values_of(dtype, rng, shape)
    executor = _make_executor(None)
    normalizer = _make_normalizer("percentile", _open_source(image), shape[1:], executor)
    wide = np.dtype(dtype).itemsize > (4 if np.dtype(dtype).kind == "f" else 2)
    copy = np.float64 if wide else np.float32  # what normalize_percentile computes in
    bottom, top = np.percentile(image.astype(copy), [1.0, 99.8], axis=(1, 2))  # slow, obvious
    np.testing.assert_array_equal(normalizer.offset, bottom.astype(copy))
    expected = np.where(top > bottom, 1.0 / (top - bottom + 1e-20), 1.0).astype(copy)
    np.testing.assert_array_equal(normalizer.inverse, expected)


def test_statistics_hold_a_bounded_batch_of_region_results(rng, monkeypatch):
    """Histograms are summed batch by batch, so memory does not grow with the image."""
    import biounet.inference.blockwise_normalization as module

    monkeypatch.setattr(module, "_REGION_PIXELS", 100)  # 10 x 10 regions: 132 of them
    image = rng.standard_normal((1, 117, 109)).astype(np.float32)
    executor = _make_executor(None)
    batches = []
    original = executor.map
    monkeypatch.setattr(executor, "map", lambda *a, **k: batches.append(len(a[2])) or original(*a, **k))
    normalizer = _make_normalizer("percentile", _open_source(image), (117, 109), executor)
    assert max(batches) == module._BATCH and sum(batches) == 2 * 12 * 11  # two passes
    bottom = np.percentile(image, [1.0], axis=(1, 2))[0]  # the slow, obvious way
    np.testing.assert_array_equal(normalizer.offset, bottom.astype(np.float32))
    # a cluster of 30 threads gets 60 regions at a time, not 16
    batches.clear()
    monkeypatch.setattr(type(executor), "parallelism", property(lambda self: 30))
    again = _make_normalizer("percentile", _open_source(image), (117, 109), executor)
    assert max(batches) == 60 and sum(batches) == 2 * 12 * 11
    np.testing.assert_array_equal(again.offset, normalizer.offset)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16])
def test_percentile_interpolation_rounds_as_numpy(dtype, rng):
    # numpy takes the difference of neighbours in the array's dtype; tiny images expose it
    executor = _make_executor(None)
    for _ in range(300):
        image = (rng.random((1, 1, 3)) * 10.0 ** rng.integers(-4, 4, (1, 1, 3))).astype(dtype)
        if dtype == np.uint16:
            image = rng.integers(0, 65535, (1, 1, 3), dtype=np.uint16)
        normalizer = _make_normalizer("percentile", _open_source(image), (1, 3), executor)
        expected = normalize_percentile(image, axis=(1, 2))
        np.testing.assert_array_equal(normalizer(image), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64])
def test_percentile_normalization_of_wide_sources_equals_in_memory(dtype, rng, tmp_path):
    model = make_model()
    image = (rng.standard_normal((180, 210)) * 300 + 1000).astype(dtype)
    source = as_zarr(tmp_path / "source.zarr", image, chunks=(64, 64))
    output = predict_blockwise(
        model, source, tmp_path / "out.zarr", tile_shape=(76, 92), normalization="percentile"
    )
    expected = predict_tiled(model, normalize_percentile(image), tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("normalization", [normalize_percentile, normalize_zscore])
@pytest.mark.parametrize(
    "make", [lambda r: r.integers(0, 1000, (150, 170)).astype(np.int32) + 10**9,
             lambda r: 1e4 + 1e-3 * r.random((150, 170)),
             lambda r: r.random((150, 170)) * 1e39]
)
def test_wide_sources_cancel_their_offset_in_float64_as_in_memory(normalization, make, rng, tmp_path):
    # float32 would round 1e9 + k, or 1e4 + 1e-3 u, to a few levels, and 1e39 to infinity
    model = make_model()
    image = make(rng)
    name = "percentile" if normalization is normalize_percentile else "zscore"
    output = predict_blockwise(model, image, tmp_path / "out.zarr", tile_shape=(76, 92),
                               normalization=name)
    expected = predict_tiled(model, normalization(image), tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)


def test_non_finite_source_is_refused_before_the_target_exists(rng, tmp_path):
    model = make_model()
    image = rng.random((150, 170), dtype=np.float32)
    image[120, 7] = np.nan
    image[140, 160] = np.inf
    for normalization in ("percentile", "zscore", None):
        target = tmp_path / f"{normalization}.zarr"
        one_line_error(ValueError, r"NaN or infinite values, the first at \(120, 7\)",
                       predict_blockwise, model, image, target, normalization=normalization)
        assert not target.exists()


def test_float64_beyond_float32_is_refused_unnormalised_before_the_target_exists(rng, tmp_path):
    model = make_model()
    image = rng.random((150, 170))
    image[30, 140] = -1e39  # float32 would make it -inf
    target = tmp_path / "out.zarr"
    one_line_error(ValueError, r"beyond float32's range, the first at \(30, 140\).*'percentile'",
                   predict_blockwise, model, image, target)
    assert not target.exists()
    image[30, 140] = -3e38  # float32 holds it
    predict_blockwise(model, image, target, tile_shape=(76, 92))
    assert np.isfinite(zarr.open_array(str(target))[...]).all()
    # +3e38 overflows inside the network: refused, never NaN blocks recorded as done
    image[30, 140] = 3e38
    message = r"network's output is NaN or infinite for input values in \[.*, 3e\+38\]; normalise"
    one_line_error(ValueError, message, predict_blockwise, model, image, tmp_path / "again.zarr",
                   tile_shape=(76, 92), block_shape=(72, 104))
    assert 1 not in done_blocks(zarr.open_array(str(tmp_path / "again.zarr")))  # block (0, 1)
    one_line_error(ValueError, message, predict_tiled, model, image.astype(np.float32), tile_shape=(76, 92))


def test_a_bad_value_of_a_later_channel_is_named_with_its_channel(rng, tmp_path):
    model = make_model(in_channels=2)
    image = rng.random((2, 150, 170), dtype=np.float32)
    image[1, 3, 4] = np.nan
    image[0, 100, 100] = np.inf
    one_line_error(ValueError, r"NaN or infinite values, the first at \(3, 4\) of channel 1",
                   predict_blockwise, model, image, tmp_path / "out.zarr", normalization="zscore")


def test_finished_resumed_run_reads_no_statistics(rng, tmp_path, monkeypatch):
    import biounet.inference.blockwise as module

    model = make_model()
    image = rng.random((150, 170), dtype=np.float32)
    target = tmp_path / "out.zarr"
    first = predict_blockwise(model, image, target, tile_shape=(76, 92), normalization="percentile")
    calls = []
    original = module._make_normalizer
    monkeypatch.setattr(module, "_make_normalizer", lambda *a: calls.append(1) or original(*a))
    again = predict_blockwise(model, image, target, tile_shape=(76, 92), normalization="percentile")
    assert calls == []  # resume is the default
    np.testing.assert_array_equal(again[...], first[...])
    predict_blockwise(model, image, target, tile_shape=(76, 92), normalization="percentile",
                      resume=False)
    assert calls == [1]  # without resume the prediction is redone, statistics first


def test_progress_bar_counts_blocks(rng, tmp_path, capsys):
    image = rng.random((150, 170), dtype=np.float32)
    predict_blockwise(
        make_model(), image, tmp_path / "out.zarr", tile_shape=(76, 92), block_shape=(72, 104),
        progress=True,
    )
    assert "6/6" in capsys.readouterr().err


def one_line_error(error_type, match, function, *args, **kwargs) -> None:
    with pytest.raises(error_type, match=match) as caught:
        function(*args, **kwargs)
    assert "\n" not in str(caught.value)


def test_bad_inputs_give_one_line_errors(rng, tmp_path):
    model = make_model()
    image = rng.random((150, 170), dtype=np.float32)
    target = tmp_path / "out.zarr"
    predict_blockwise(model, image, target, tile_shape=(76, 92))
    one_line_error(ValueError, r"target .*out.zarr has shape \(2, 150, 170\).*\(2, 150, 171\)",
                   predict_blockwise, model, rng.random((150, 171)), target)
    one_line_error(ValueError, "source has 3 channel", predict_blockwise, model, rng.random((3, 150, 170)), tmp_path / "a.zarr")
    one_line_error(ValueError, r"source must be \(Y, X\) or \(C, Y, X\)", predict_blockwise, model, rng.random((1, 1, 50, 50)), tmp_path / "a.zarr")
    one_line_error(TypeError, "source must be real-valued", predict_blockwise, model, np.zeros((50, 50), complex), tmp_path / "a.zarr")
    one_line_error(FileNotFoundError, "source", predict_blockwise, model, tmp_path / "missing.zarr", tmp_path / "a.zarr")
    one_line_error(ValueError, "block_shape must be 2 positive", predict_blockwise, model, image, tmp_path / "b.zarr", block_shape=(64,))
    one_line_error(ValueError, "tile_shape", predict_blockwise, model, image, tmp_path / "c.zarr", tile_shape=(75, 92))
    one_line_error(ValueError, "normalization must be", predict_blockwise, model, image, tmp_path / "d.zarr", normalization="minmax")
    one_line_error(ValueError, "scheduler must be", predict_blockwise, model, image, tmp_path / "f.zarr", scheduler="processes")
    one_line_error(TypeError, "model must have a UNetConfig", predict_blockwise, torch.nn.Conv2d(1, 2, 3), image, tmp_path / "g.zarr")
    not_zarr = tmp_path / "notes.txt"
    not_zarr.write_text("keep me")
    one_line_error(ValueError, "not a zarr array", predict_blockwise, model, image, not_zarr)
    assert not_zarr.read_text() == "keep me"
    odd_chunks = zarr.create_array(store=str(tmp_path / "h.zarr"), shape=(2, 150, 170), chunks=(2, 50, 50), dtype="f4")
    one_line_error(ValueError, r"target chunks \(50, 50\) are not whole numbers of the tile step \(36, 52\)",
                   predict_blockwise, model, image, odd_chunks, tile_shape=(76, 92))


# dask.distributed: one LocalCluster of two worker processes shared by the tests below.


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.mark.slow
def test_local_cluster_equals_in_memory(cluster_client, rng, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    model = make_model()
    image = rng.integers(0, 50, (300, 400), dtype=np.uint8)
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, image, tile=(64, 64))  # reopened by path in every worker
    output = predict_blockwise(
        model, path, tmp_path / "out.zarr", tile_shape=(76, 92), normalization="percentile",
        scheduler=cluster_client,
    )
    expected = predict_tiled(model, normalize_percentile(image), tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)
    # rebuilt once per worker process from config + weights, not shipped as a module
    cached = cluster_client.run(
        lambda: len(__import__("biounet.inference.blockwise", fromlist=["x"])._MODEL_CACHE)
    )
    assert max(cached.values()) == 1
    from biounet.inference.blockwise_executors import _DistributedExecutor

    assert _DistributedExecutor(cluster_client, owns_client=False).parallelism == 2  # 2 x 1 thread

    source = as_zarr(tmp_path / "source.zarr", image, chunks=(100, 100))
    again = predict_blockwise(
        model, source, tmp_path / "again.zarr", tile_shape=(76, 92),
        scheduler=cluster_client.scheduler.address,
    )
    np.testing.assert_allclose(
        again[...], predict_tiled(model, image, tile_shape=(76, 92)), rtol=0, atol=1e-5
    )

    in_memory = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=(2, 300, 400), chunks=(2, 144, 104), dtype="f4"
    )
    one_line_error(ValueError, "distributed workers cannot write", predict_blockwise, model, path, in_memory, tile_shape=(76, 92), scheduler=cluster_client)
    with tifffile.imread(path, aszarr=True) as store:
        opened = zarr.open(store, mode="r")
        one_line_error(TypeError, "pass its path instead", predict_blockwise, model, opened, tmp_path / "x.zarr", scheduler=cluster_client)


@pytest.mark.slow
def test_killed_worker_is_retried(cluster_client, rng, tmp_path):
    model = make_model()
    image = rng.random((300, 400), dtype=np.float32)
    source = as_zarr(tmp_path / "source.zarr", image, chunks=(100, 100))
    target = tmp_path / "out.zarr"
    pids = sorted(cluster_client.run(os.getpid).values())
    killed = []

    def kill_after_first_block() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (target / "c").is_dir() and any(path.is_file() for path in (target / "c").rglob("*")):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.01)

    def slow(window):  # keeps both workers busy when one of them is killed
        time.sleep(0.2)
        return window

    killer = threading.Thread(target=kill_after_first_block)
    killer.start()
    output = predict_blockwise(
        model, source, target, tile_shape=(76, 92), block_shape=(144, 104), normalization=slow,
        scheduler=cluster_client,
    )
    killer.join()
    assert killed == [pids[0]]
    assert len(done_blocks(output)) == 12
    np.testing.assert_allclose(
        output[...], predict_tiled(model, image, tile_shape=(76, 92)), rtol=0, atol=1e-5
    )


KILLED_CHILD = r"""
import sys, time
import biounet.inference.blockwise as blockwise
from biounet.weightfile import load_model
model_path, source, target = sys.argv[1:4]
original = blockwise._predict_block
def slow(job, index, tiles):  # gives the parent time to kill it mid-run
    time.sleep(0.3)
    return original(job, index, tiles)
blockwise._predict_block = slow
blockwise.predict_blockwise(
    load_model(model_path), source, target, tile_shape=(76, 92), block_shape=(144, 104)
)
"""


@pytest.mark.slow
def test_sigkilled_run_resumes_from_what_it_recorded(rng, tmp_path, monkeypatch):
    import subprocess
    import sys

    import biounet.inference.blockwise as blockwise
    from biounet.weightfile import save_model

    model = make_model()
    model_path = save_model(model, tmp_path / "model.safetensors")
    image = rng.random((300, 400), dtype=np.float32)
    source = tmp_path / "source.zarr"
    as_zarr(source, image, chunks=(100, 100))
    target = tmp_path / "out.zarr"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(model_path), str(source), str(target)],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        try:
            if done_blocks(zarr.open_array(str(target), mode="r")):
                break
        except Exception:  # the target or its record is not there yet
            pass
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)  # no finally, no last flush of the record
    _, stderr = child.communicate()
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    recorded = done_blocks(zarr.open_array(str(target), mode="r"))
    assert 1 <= len(recorded) < 12

    original, computed = blockwise._predict_block, []

    def counting(job, index, tiles):
        computed.append(int(np.ravel_multi_index(index, (3, 4))))
        return original(job, index, tiles)

    monkeypatch.setattr(blockwise, "_predict_block", counting)
    output = predict_blockwise(model, source, target, tile_shape=(76, 92), block_shape=(144, 104))
    assert sorted(computed) == sorted(set(range(12)) - set(recorded))
    assert done_blocks(output) == list(range(12))
    np.testing.assert_allclose(
        output[...], predict_tiled(model, image, tile_shape=(76, 92)), rtol=0, atol=1e-5
    )


def test_unreachable_scheduler_is_one_line(rng, tmp_path):
    pytest.importorskip("distributed")
    import dask

    image = rng.random((100, 100), dtype=np.float32)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        one_line_error(ConnectionError, r"scheduler tcp://127.0.0.1:1 cannot be reached", predict_blockwise, make_model(), image, tmp_path / "out.zarr", scheduler="tcp://127.0.0.1:1")
    assert not (tmp_path / "out.zarr").exists()  # checked before the target is created


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("normalization", ["percentile", "zscore"])
def test_bright_objects_normalizes_as_in_memory(dtype, normalization, rng, monkeypatch):
    """Channel 0 has a bright background and is inverted, channel 1 is kept, both exactly
    as data.normalize does it with the whole image in memory."""
    import biounet.inference.blockwise_normalization as module

    monkeypatch.setattr(module, "_REGION_PIXELS", 400)  # many ragged regions
    image = rng.integers(10, 40, (2, 61, 47)).astype(dtype)
    image[:, 20:30, 10:35] += 150  # objects on a quarter of the pixels
    image[0] = 250 - image[0]
    normalizer = _make_normalizer(
        normalization, _open_source(image), (61, 47), _make_executor(None), "bright_objects"
    )
    in_memory = {"percentile": normalize_percentile, "zscore": normalize_zscore}[normalization]
    expected = in_memory(image, axis=(1, 2), polarity="bright_objects")
    np.testing.assert_array_equal(normalizer(image), expected)
    assert normalizer.inverse[0] < 0 < normalizer.inverse[1]


def test_bright_objects_prediction_equals_in_memory_and_changes_the_signature(rng, tmp_path):
    model = make_model()
    image = rng.integers(200, 255, (200, 230)).astype(np.uint8)
    image[50:90, 60:120] = 20  # a dark object on a bright background
    options = {"tile_shape": (76, 92), "normalization": "percentile"}
    output = predict_blockwise(
        model, image, tmp_path / "out.zarr", polarity="bright_objects", **options
    )
    normalized = normalize_percentile(image, polarity="bright_objects")[None]
    expected = predict_tiled(model, normalized, tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"differing in \[.polarity.\]"):
        predict_blockwise(model, image, tmp_path / "out.zarr", **options)


@pytest.mark.parametrize(
    ("normalization", "polarity", "match"),
    [
        (None, "bright_objects", "needs normalization 'percentile' or 'zscore', got None"),
        ("percentile", "dark", r"polarity must be one of \['as_is', 'bright_objects'\]"),
    ],
)
def test_bad_polarity_is_refused_before_the_target_exists(normalization, polarity, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        predict_blockwise(
            make_model(), np.zeros((100, 100), np.float32), tmp_path / "out.zarr",
            normalization=normalization, polarity=polarity,
        )
    assert not (tmp_path / "out.zarr").exists()
