"""Tests of biounet.data.layouts on synthetic folders in tmp_path and on the real data sets."""

import logging
import pickle
from collections import deque

import numpy as np
import pytest
import tifffile
from PIL import Image

from biounet.data.layouts import (
    SampleList,
    convert_labels,
    detect_layout,
    open_dataset,
)

DSB_OVERLAP_ID = "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e"


def reference_components(mask):
    """4-connected components by breadth-first flood fill, numbered in raster order."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    n_labels = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        n_labels += 1
        labels[start] = n_labels
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = n_labels
                    queue.append((ny, nx))
    return labels


def blobs(shape=(24, 32), n_blobs=3):
    """Instance image of `n_blobs` separated rectangles with ids 1..n_blobs."""
    labels = np.zeros(shape, dtype=np.uint16)
    for index in range(n_blobs):
        labels[2 + 7 * index : 6 + 7 * index, 3 + index : 12 + 2 * index] = index + 1
    return labels


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array, photometric="minisblack")  # (N, Y, X): N pages
    else:
        Image.fromarray(array).save(path)
    return path


def make_pairs(root, names=("a", "b", "c"), *, suffix=".png", label_folder="labels", rng=None):
    rng = np.random.default_rng(rng)
    images = {}
    for index, name in enumerate(names):
        image = rng.integers(0, 256, size=(24, 32), dtype=np.uint8)
        save(root / "images" / f"{name}{suffix}", image)
        binary = (blobs(n_blobs=index + 1) > 0).astype(np.uint8) * 255
        save(root / label_folder / f"{name}{suffix}", binary)
        images[name] = image
    return images


def make_dsb_kaggle(root, rng):
    """Two Kaggle-form samples; masks m1 and m2 of `first` overlap in one pixel."""
    image = rng.integers(0, 256, size=(16, 20, 4), dtype=np.uint8)
    masks = np.zeros((3, 16, 20), dtype=np.uint8)
    masks[0, 2:6, 2:6] = 255
    masks[1, 5:9, 5:9] = 255  # shares pixel (5, 5) with m1
    masks[2, 12:15, 1:19] = 255
    for sample in ("first", "second"):
        save(root / sample / "images" / f"{sample}.png", image)
        for index, mask in enumerate(masks, start=1):
            save(root / sample / "masks" / f"m{index}.png", mask)
    return image, masks


def make_ctc(root):
    """Sequence 01: frames 0-4, 1 and 3 annotated; 02: frames 0-2, 0 annotated."""
    truths = {}
    for sequence, n_frames, annotated in (("01", 5, (1, 3)), ("02", 3, (0,))):
        for frame in range(n_frames):
            save(root / sequence / f"t{frame:03d}.tif", np.full((16, 16), frame, np.uint16))
        for frame in annotated:
            truth = blobs((16, 16), n_blobs=2) * 3  # ids 3 and 6: an instance map
            save(root / f"{sequence}_GT" / "SEG" / f"man_seg{frame:03d}.tif", truth)
            truths[f"{sequence}_t{frame:03d}"] = truth
    save(root / "01_GT" / "TRA" / "man_track000.tif", np.zeros((16, 16), np.uint16))
    save(root / "03" / "t000.tif", np.zeros((16, 16), np.uint16))  # no ground truth
    return truths


def test_pairs_png_read_images_and_label_components(tmp_path, rng):
    images = make_pairs(tmp_path, rng=rng)
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "pairs" and dataset.names == ("a", "b", "c") and len(dataset) == 3
    for index, sample in enumerate(dataset):
        np.testing.assert_array_equal(sample.image, images[sample.name])
        assert sample.labels.dtype == np.int32
        np.testing.assert_array_equal(sample.labels, blobs(n_blobs=index + 1))


@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_pairs_tiff_with_masks_folder_keeps_instance_ids(tmp_path, suffix, rng):
    instance = blobs() * np.array([0, 5, 9, 40], dtype=np.uint16)[blobs()]
    save(tmp_path / "images" / f"x{suffix}", rng.random((24, 32)).astype(np.float32))
    save(tmp_path / "masks" / "x.png", instance.astype(np.uint8))
    sample = open_dataset(tmp_path, layout="pairs")[0]
    assert sample.image.dtype == np.float32
    np.testing.assert_array_equal(sample.labels, instance)


def test_pairs_rgba_image_matches_grey_labels(tmp_path, rng):
    save(tmp_path / "images" / "x.png", rng.integers(0, 256, (24, 32, 4), dtype=np.uint8))
    save(tmp_path / "labels" / "x.png", (blobs() > 0).astype(np.uint8))
    sample = open_dataset(tmp_path)["x"]
    assert sample.image.shape == (24, 32, 4) and sample.labels.max() == 3


def test_pairs_errors(tmp_path, rng):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        open_dataset(tmp_path)
    make_pairs(tmp_path, names=("a", "b", "c"), rng=rng)
    for name in ("b", "c"):
        (tmp_path / "labels" / f"{name}.png").unlink()
    with pytest.raises(ValueError, match=r"2 of 3 images .* no labels .*: b, c"):
        open_dataset(tmp_path)
    save(tmp_path / "labels" / "b.png", np.zeros((10, 32), np.uint8))
    save(tmp_path / "labels" / "c.tif", np.ones((24, 32), np.float32))
    dataset = open_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"b\.png have shape \(10, 32\) .* shape \(24, 32\)"):
        dataset["b"]
    with pytest.raises(ValueError, match=r"c\.tif have dtype float32"):
        dataset[2]
    save(tmp_path / "labels" / "c.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(ValueError, match="holds both c.png and c.tif"):
        open_dataset(tmp_path)


def test_pairs_empty_and_negative_labels(tmp_path, rng):
    make_pairs(tmp_path, names=("a",), suffix=".tif", rng=rng)
    save(tmp_path / "labels" / "a.tif", np.zeros((24, 32), np.uint8))
    with pytest.raises(ValueError, match=r"a\.tif have no foreground pixel; pass allow_empty"):
        open_dataset(tmp_path)[0]
    assert open_dataset(tmp_path, allow_empty=True)[0].labels.max() == 0
    save(tmp_path / "labels" / "a.tif", -blobs().astype(np.int16))
    with pytest.raises(ValueError, match=r"a\.tif contain negative value -3"):
        open_dataset(tmp_path)[0]


def test_both_label_folders_or_no_images_folder_are_rejected(tmp_path, rng):
    make_pairs(tmp_path, rng=rng)
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="both labels/ and masks/"):
        open_dataset(tmp_path)
    with pytest.raises(ValueError, match="no images/ folder"):
        open_dataset(tmp_path / "labels", layout="pairs")


def test_stack_folder_gives_one_sample_per_page(tmp_path, rng):
    volume = rng.integers(0, 256, size=(3, 24, 32), dtype=np.uint8)
    labels = np.stack([(blobs(n_blobs=n) > 0) * 255 for n in (1, 2, 3)]).astype(np.uint8)
    save(tmp_path / "train-volume.tif", volume)
    save(tmp_path / "train-labels.tif", labels)
    save(tmp_path / "test-volume.tif", volume)  # no labels: ignored
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "stack" and dataset.names == ("00", "01", "02")
    for page, sample in enumerate(dataset):
        np.testing.assert_array_equal(sample.image, volume[page])
        np.testing.assert_array_equal(sample.labels, blobs(n_blobs=page + 1))
    by_file = open_dataset(tmp_path / "train-volume.tif", labels_path=tmp_path / "train-labels.tif")
    np.testing.assert_array_equal(by_file[-1].labels, dataset[2].labels)


def test_stack_as_one_volume_for_3d_networks(tmp_path, rng):
    volume = rng.integers(0, 256, size=(4, 24, 32), dtype=np.uint8)
    labels = np.zeros((4, 24, 32), dtype=np.uint8)
    labels[0:3, 2:8, 3:9] = 255  # one cell through three slices
    labels[1:4, 12:20, 15:25] = 255  # and another
    save(tmp_path / "train-volume.tif", volume)
    save(tmp_path / "train-labels.tif", labels)
    for dataset in (
        open_dataset(tmp_path, volume=True),
        open_dataset(tmp_path / "train-volume.tif", labels_path=tmp_path / "train-labels.tif",
                     volume=True),
    ):
        assert dataset.layout == "stack" and dataset.names == ("train-volume",)
        (sample,) = list(dataset)
        np.testing.assert_array_equal(sample.image, volume)
        assert sample.labels.shape == (4, 24, 32) and sample.labels.dtype == np.int32
        # binary labels become 3-D face-connected components, not per-slice ones
        assert sorted(np.unique(sample.labels).tolist()) == [0, 1, 2]
        assert np.array_equal(sample.labels > 0, labels > 0)
    save(tmp_path / "train-labels.tif", labels[:, :, :30])
    with pytest.raises(ValueError, match=r"train-labels\.tif have shape \(4, 24, 30\)"):
        open_dataset(tmp_path, volume=True)[0]


def test_stack_errors(tmp_path):
    save(tmp_path / "a-volume.tif", np.zeros((3, 8, 8), np.uint8))
    save(tmp_path / "a-labels.tif", np.ones((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"a-labels\.tif has shape \(2, 8, 8\) .* page counts"):
        open_dataset(tmp_path)
    with pytest.raises(ValueError, match="labels_path must name the label stack"):
        open_dataset(tmp_path / "a-volume.tif", layout="stack")
    save(tmp_path / "b-volume.tif", np.zeros((2, 8, 8), np.uint8))
    save(tmp_path / "b-labels.tif", np.ones((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="exactly one .* found prefixes: a, b"):
        open_dataset(tmp_path)


def test_dsb_kaggle_form_builds_instances_later_mask_wins(tmp_path, rng):
    image, masks = make_dsb_kaggle(tmp_path, rng)
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "dsb" and dataset.names == ("first", "second")
    sample = dataset["first"]
    np.testing.assert_array_equal(sample.image, image)
    expected = np.zeros((16, 20), np.int32)
    for index, mask in enumerate(masks, start=1):
        expected[mask > 0] = index
    np.testing.assert_array_equal(sample.labels, expected)
    assert sample.labels[5, 5] == 2 and np.unique(sample.labels).size == 4


def test_dsb_project_form_equals_kaggle_form(tmp_path, rng):
    make_dsb_kaggle(tmp_path / "kaggle", rng)
    for sample in ("first", "second"):
        (tmp_path / "flat" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "kaggle" / sample / "images" / f"{sample}.png").rename(
            tmp_path / "flat" / "images" / f"{sample}.png")
        (tmp_path / "flat" / "labels").mkdir(exist_ok=True)
        (tmp_path / "kaggle" / sample / "masks").rename(tmp_path / "flat" / "labels" / sample)
    dataset = open_dataset(tmp_path / "flat")
    assert dataset.layout == "dsb" and dataset.names == ("first", "second")
    assert dataset[0].labels[5, 5] == 2 and dataset[0].labels.max() == 3


def test_dsb_errors(tmp_path, rng):
    make_dsb_kaggle(tmp_path, rng)
    save(tmp_path / "third" / "images" / "third.png", np.zeros((16, 20), np.uint8))
    with pytest.raises(ValueError, match=r"1 of 3 images .*: third"):
        open_dataset(tmp_path)
    save(tmp_path / "third" / "masks" / "m.png", np.zeros((16, 21), np.uint8))
    with pytest.raises(ValueError, match=r"m\.png has shape \(16, 21\) .* shape \(16, 20\)"):
        open_dataset(tmp_path)["third"]
    with pytest.raises(ValueError, match="label_kind 'semantic' does not apply"):
        open_dataset(tmp_path, label_kind="semantic")
    save(tmp_path / "third" / "masks" / "m.png", np.zeros((16, 20), np.uint8))
    with pytest.raises(ValueError, match="masks in .*third.* no foreground"):
        open_dataset(tmp_path, layout="dsb")["third"]


def test_ctc_reads_annotated_frames_only(tmp_path, caplog):
    truths = make_ctc(tmp_path)
    save(tmp_path / "02_GT" / "SEG" / "man_seg002_005.tif", np.ones((16, 16), np.uint16))
    with caplog.at_level(logging.INFO, logger="biounet.data.layout_files"):
        dataset = open_dataset(tmp_path)
    assert "skipping 1 per-slice 3-D annotations" in caplog.text
    assert dataset.layout == "ctc" and dataset.names == ("01_t001", "01_t003", "02_t000")
    for sample in dataset:
        frame = int(sample.name[-3:])
        np.testing.assert_array_equal(sample.image, np.full((16, 16), frame, np.uint16))
        np.testing.assert_array_equal(sample.labels, truths[sample.name])  # ids 3, 6 kept


def test_ctc_annotation_without_frame(tmp_path):
    make_ctc(tmp_path)
    save(tmp_path / "01_GT" / "SEG" / "man_seg007.tif", blobs((16, 16)))
    with pytest.raises(ValueError, match=r"no frame t<same number> .*: man_seg7"):
        open_dataset(tmp_path)


def test_detect_layout_and_its_errors(tmp_path, rng):
    make_pairs(tmp_path / "pairs", rng=rng)
    make_ctc(tmp_path / "ctc")
    make_dsb_kaggle(tmp_path / "kaggle", rng)
    assert detect_layout(tmp_path / "pairs") == "pairs"
    assert detect_layout(tmp_path / "ctc") == "ctc"
    assert detect_layout(tmp_path / "kaggle") == "dsb"
    assert detect_layout(tmp_path / "pairs" / "images" / "a.png") == "stack"
    (tmp_path / "other" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no supported .* open .*train; supported: pairs .* ctc"):
        detect_layout(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(ValueError, match=r"issue #3"):
        open_dataset(tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="layout must be"):
        open_dataset(tmp_path / "pairs", layout="coco")
    with pytest.raises(ValueError, match="label_kind must be"):
        open_dataset(tmp_path / "pairs", label_kind="panoptic")


def test_sample_list_indexing_slicing_and_pickling(tmp_path, rng):
    make_pairs(tmp_path, names=("a", "b", "c", "d"), rng=rng)
    dataset = open_dataset(tmp_path)
    part = dataset[1:3]
    assert isinstance(part, SampleList) and part.names == ("b", "c")
    np.testing.assert_array_equal(part["c"].labels, dataset[2].labels)
    assert dataset[-1].name == "d"
    with pytest.raises(KeyError, match="no sample named 'z'"):
        dataset["z"]
    restored = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(restored["b"].image, dataset["b"].image)
    assert "n_samples=4" in repr(dataset)
    with pytest.raises(ValueError, match="names must be unique"):
        SampleList(["a", "a"], [None, None], layout="pairs", root=tmp_path)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_binary_labels_equal_reference_components(rng, fraction):
    mask = rng.random((40, 50)) < fraction  # many diagonal-only contacts
    expected = reference_components(mask)
    np.testing.assert_array_equal(convert_labels(mask.astype(np.uint8) * 255), expected)
    np.testing.assert_array_equal(convert_labels(mask), expected)
    np.testing.assert_array_equal(convert_labels(mask * 7, kind="binary"), expected)


def test_convert_labels_kinds():
    three_valued = np.array([[0, 1, 1, 0, 2, 2]], dtype=np.uint8)
    np.testing.assert_array_equal(convert_labels(three_valued), three_valued)  # instance ids
    np.testing.assert_array_equal(convert_labels(three_valued, kind="binary"),
                                  [[0, 1, 1, 0, 2, 2]])
    semantic = np.array([[1, 0, 1]], dtype=np.uint8)  # class 1 in two places
    np.testing.assert_array_equal(convert_labels(semantic, kind="semantic"), semantic)
    np.testing.assert_array_equal(convert_labels(semantic), [[1, 0, 2]])
    full = np.full((2, 2), 4, np.uint16)  # one value, no zero: not binary
    np.testing.assert_array_equal(convert_labels(full), full)
    volume = np.zeros((2, 2, 2), bool)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[1, 0, 0] = True  # (1, 1, 1) only touches a corner
    assert convert_labels(volume).max() == 2


def test_convert_labels_errors():
    with pytest.raises(ValueError, match="kind must be"):
        convert_labels(np.ones((2, 2), np.uint8), kind="thing")
    with pytest.raises(ValueError, match="id 4294967295, beyond the int32 range"):
        convert_labels(np.full((2, 2), 2**32 - 1, np.uint32))
    with pytest.raises(ValueError, match="my.png have dtype float64"):
        convert_labels(np.ones((2, 2)), name="my.png")


@pytest.mark.data
def test_isbi2012_train_pairs(data_root):
    dataset = open_dataset(data_root / "isbi2012" / "train")
    assert dataset.layout == "pairs" and len(dataset) == 30
    assert dataset.names == tuple(f"{index:02d}" for index in range(30))
    for sample in dataset:
        assert sample.image.shape == sample.labels.shape == (512, 512)
        assert sample.labels.dtype == np.int32 and sample.labels.max() > 50
    raw = np.asarray(Image.open(data_root / "isbi2012" / "train" / "labels" / "07.png"))
    np.testing.assert_array_equal(dataset["07"].labels > 0, raw == 255)


@pytest.mark.data
def test_isbi2012_as_stack_equals_pairs(data_root, tmp_path):
    train = data_root / "isbi2012" / "train"
    pairs = open_dataset(train)[:4]
    for kind, folder in (("volume", "images"), ("labels", "labels")):
        pages = [np.asarray(Image.open(train / folder / f"{name}.png")) for name in pairs.names]
        tifffile.imwrite(tmp_path / f"train-{kind}.tif", np.stack(pages), photometric="minisblack")
    stack = open_dataset(tmp_path)
    assert stack.names == pairs.names
    for from_stack, from_pairs in zip(stack, pairs, strict=True):
        np.testing.assert_array_equal(from_stack.image, from_pairs.image)
        np.testing.assert_array_equal(from_stack.labels, from_pairs.labels)


@pytest.mark.data
def test_dsb2018_ids_and_instance_counts(data_root):
    root = data_root / "dsb2018"
    dataset = open_dataset(root)
    listed = [line.split("/")[-1] for line in (root / "ids.txt").read_text().split()]
    assert dataset.layout == "dsb" and len(dataset) == 166 and dataset.names == tuple(listed)
    for name in dataset.names[:3]:
        sample = dataset[name]
        n_masks = len(list((root / "labels" / name).glob("*.png")))
        assert sample.image.shape[:2] == sample.labels.shape and sample.image.shape[2] == 4
        assert np.unique(sample.labels[sample.labels > 0]).size == n_masks == sample.labels.max()


@pytest.mark.data
def test_dsb2018_overlap_goes_to_later_mask(data_root):
    folder = data_root / "dsb2018" / "labels" / DSB_OVERLAP_ID
    mask_paths = sorted(folder.glob("*.png"))
    masks = [np.asarray(Image.open(path)) > 0 for path in mask_paths]
    counts = np.sum(masks, axis=0)
    assert (counts > 1).any()
    labels = open_dataset(data_root / "dsb2018")[DSB_OVERLAP_ID].labels
    for y, x in zip(*np.nonzero(counts > 1), strict=True):
        owners = [index for index, mask in enumerate(masks, start=1) if mask[y, x]]
        assert labels[y, x] == max(owners)
    assert np.unique(labels[labels > 0]).size == len(mask_paths)


@pytest.mark.data
def test_dsb2018_kaggle_form_via_links(data_root, tmp_path):
    root = data_root / "dsb2018"
    name = DSB_OVERLAP_ID
    (tmp_path / name / "images").mkdir(parents=True)
    (tmp_path / name / "images" / f"{name}.png").symlink_to(root / "images" / f"{name}.png")
    (tmp_path / name / "masks").symlink_to(root / "labels" / name, target_is_directory=True)
    kaggle = open_dataset(tmp_path)
    assert kaggle.layout == "dsb" and kaggle.names == (name,)
    np.testing.assert_array_equal(kaggle[0].labels, open_dataset(root)[name].labels)


def test_reference_components_self_check():
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]], bool)
    np.testing.assert_array_equal(reference_components(mask), [[1, 0, 2], [0, 2, 2], [3, 0, 0]])


@pytest.mark.data
def test_dsb2018_polarity_rule_agrees_with_the_annotations(data_root):
    """bright_background, from intensities alone, says which images have dark nuclei."""
    from biounet.data.normalize import bright_background, to_float_image

    dark_nuclei = 0
    for sample in open_dataset(data_root / "dsb2018"):
        grey = to_float_image(sample.image)
        nuclei_darker = grey[sample.labels > 0].mean() < grey[sample.labels == 0].mean()
        assert bool(bright_background(grey)) == nuclei_darker, sample.name
        dark_nuclei += nuclei_darker
    assert 30 <= dark_nuclei <= 40  # about a fifth: brightfield and H&E
