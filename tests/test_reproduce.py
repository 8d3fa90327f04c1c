"""The reproduction protocols: splits on real data, a tiny run end to end, the CTC reader."""

import dataclasses
import json

import numpy as np
import pytest
import tifffile

from biounet import protocols, reproduce
from biounet.cli import main
from biounet.training import presets


@pytest.fixture
def tiny_preset(monkeypatch):
    original = presets.preset

    def tiny(name):
        config = original(name)
        model = dataclasses.replace(config.model, depth=2, base_channels=4)
        train = dataclasses.replace(config.train, tile_shape=(108, 108), workers=0, validate_every=2, checkpoint_every=2)
        return presets.RunConfig(model=model, train=train, augment=config.augment)

    monkeypatch.setattr(presets, "preset", tiny)


@pytest.mark.data
def test_isbi_split_keeps_evaluation_slices_apart(data_root):
    split = protocols.isbi2012_split(data_root / "isbi2012")
    names = lambda samples: [sample.name for sample in samples]  # noqa: E731
    assert names(split.train) == [f"{i:02d}" for i in range(18)]
    assert names(split.val) == ["18", "19"]
    assert names(split.test) == [f"{i:02d}" for i in range(20, 30)]


@pytest.mark.data
def test_dsb_split_follows_ids_file(data_root):
    split = protocols.dsb2018_split(data_root / "dsb2018")
    ids = [line.split("/")[-1] for line in (data_root / "dsb2018" / "ids.txt").read_text().split()]
    assert [s.name for s in split.train] + [s.name for s in split.val] == ids[:126]
    assert [s.name for s in split.test] == ids[126:]


@pytest.mark.data
def test_isbi_reproduction_runs_on_a_tiny_budget(data_root, tmp_path, tiny_preset, capsys):
    split = protocols.isbi2012_split(data_root / "isbi2012")
    split = protocols.Split(train=split.train[:2], val=split.val[:1], test=split.test[:2])
    results = reproduce.run_experiment("isbi2012", split, tmp_path, iterations=2, progress=False)
    assert results["iterations"] == 2 and results["n_test"] == 2
    for key in ("pixel_error", "rand_error", "warping_error"):
        assert 0 <= results["overall"][key] <= 1
    assert json.loads((tmp_path / "results.json").read_text())["paper_table_1"]["rand_error"] == 0.0382
    assert "paper, Table 1" in reproduce.format_results(results)


@pytest.mark.data
def test_reproduction_scores_the_flip_rotation_average(data_root, tmp_path, tiny_preset):
    from biounet.boundaries import close_boundaries
    from biounet.evaluation import evaluate
    from biounet.inference.predict import predict_tiled
    from biounet.inference.tta import predict_tta
    from biounet.weightfile import load_model

    split = protocols.isbi2012_split(data_root / "isbi2012")
    split = protocols.Split(train=split.train[:1], val=split.val[:1], test=split.test[:1])
    averaged = reproduce.run_experiment("isbi2012", split, tmp_path, iterations=4, progress=False)
    once = reproduce.run_experiment(
        "isbi2012", split, tmp_path, iterations=4, progress=False, tta=False
    )
    assert averaged["tta"] is True and once["tta"] is False
    model = load_model(tmp_path / "train" / "best.safetensors")
    item = reproduce_test_item(split, model)
    for results, predict in ((averaged, predict_tta), (once, predict_tiled)):
        foreground = predict(model, item.image)[1]
        expected = evaluate([("20", item.labels, foreground)], metrics="isbi")
        assert results["overall"] == expected.overall
        closed = evaluate([("20", item.labels, close_boundaries(foreground))], metrics="isbi")
        assert results["closed_boundaries"] == closed.overall
        assert "with closed boundaries" in reproduce.format_results(results)
    assert "8 flips/rotations" in reproduce.format_results(averaged)
    assert "8 flips/rotations" not in reproduce.format_results(once)


def reproduce_test_item(split, model):
    from biounet.data.dataset import training_images
    from biounet.training.presets import preset

    config = preset("cpu")
    (item,) = training_images(split.test, model_config=model.config, train_config=config.train)
    return item


def write_ctc(root, rng):
    for sequence in ("01", "02"):
        (root / sequence).mkdir(parents=True)
        (root / f"{sequence}_GT" / "SEG").mkdir(parents=True)
        for frame in range(4):
            labels = np.zeros((64, 64), np.uint16)
            for cell in range(1, 4):
                y, x = rng.integers(10, 54, size=2)
                labels[y - 6 : y + 6, x - 6 : x + 6] = cell
            image = (labels > 0) * 100 + rng.integers(0, 30, labels.shape)
            tifffile.imwrite(root / sequence / f"t{frame:03d}.tif", image.astype(np.uint16))
            if frame % 2 == 0:  # only some frames are annotated
                tifffile.imwrite(root / f"{sequence}_GT" / "SEG" / f"man_seg{frame:03d}.tif", labels)


def test_ctc_protocol_on_a_synthetic_folder(tmp_path, rng, tiny_preset, capsys):
    write_ctc(tmp_path / "data" / "PhC-C2DH-U373", rng)
    code = main(["reproduce", "ctc", "--data", str(tmp_path / "data"), "--dataset", "PhC-C2DH-U373", "--out", str(tmp_path / "run"), "--iterations", "2", "--quiet"])
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["n_train"], results["n_val"], results["n_test"]) == (1, 1, 2)
    assert 0 <= results["overall"]["seg"] <= 1 and 0 <= results["overall"]["foreground_iou"] <= 1
    assert results["paper_table_2_iou"] == 0.9203
    assert main(["reproduce", "ctc", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r2")]) == 2
    assert "--dataset is required" in capsys.readouterr().err


def test_config_file_changes_the_preset(tmp_path, rng, tiny_preset, capsys, caplog):
    write_ctc(tmp_path / "data" / "PhC-C2DH-U373", rng)
    config = tmp_path / "wider.json"
    config.write_text(json.dumps({"model": {"base_channels": 6},
                                  "train": {"precision": "bfloat16", "validation_metric": "foreground_iou"}}))
    common = ["reproduce", "ctc", "--data", str(tmp_path / "data"), "--dataset", "PhC-C2DH-U373", "--iterations", "2", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "run"), "--config", str(config)]) == 0
    saved = json.loads((tmp_path / "run" / "train" / "config.json").read_text())
    assert saved["model"]["base_channels"] == 6 and saved["train"]["precision"] == "bfloat16"
    assert saved["train"]["validation_metric"] == "foreground_iou"  # not the experiment's ap50
    assert "selecting the model by foreground_iou from --config, not by ap50" in caplog.text
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["model"]["base_channels"] == 6
    config.write_text(json.dumps({"train": {"precison": "bfloat16"}}))
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "r2"), "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "precison" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_boundary_class_run_scores_instances_seeded_by_the_interior(tmp_path, rng, tiny_preset):
    from biounet.config import TrainConfig
    from biounet.data.dataset import training_images
    from biounet.evaluation import evaluate
    from biounet.inference.predict import predict_tiled
    from biounet.postprocess import instances_from_probabilities
    from biounet.weightfile import load_model

    write_ctc(tmp_path / "data" / "PhC-C2DH-U373", rng)
    split = protocols.ctc_split(tmp_path / "data", "PhC-C2DH-U373")
    overrides = {"model": {"n_classes": 3, "boundary_class": True}}
    results = reproduce.run_experiment(
        "ctc", split, tmp_path / "run", iterations=4, progress=False, tta=False,
        overrides=overrides,
    )
    assert results["config"]["model"]["boundary_class"] is True
    model = load_model(tmp_path / "run" / "train" / "best.safetensors")
    assert model.config.n_classes == 3 and model.config.boundary_class
    items = training_images(split.test, model_config=model.config, train_config=TrainConfig())
    predictions = [
        (item.name, item.labels, instances_from_probabilities(predict_tiled(model, item.image), boundary_class=True))
        for item in items
    ]
    expected = evaluate(predictions, metrics="ctc,instance").overall
    assert {key: results["overall"][key] for key in expected} == expected


def test_post_processing_is_chosen_on_validation_and_recorded_beside_the_default_score(tmp_path, rng, tiny_preset):
    from biounet.config import TrainConfig
    from biounet.data.dataset import training_images
    from biounet.evaluation import evaluate, select_postprocess
    from biounet.inference.predict import predict_tiled
    from biounet.weightfile import load_model

    write_ctc(tmp_path / "data" / "PhC-C2DH-U373", rng)
    split = protocols.ctc_split(tmp_path / "data", "PhC-C2DH-U373")
    results = reproduce.run_experiment("ctc", split, tmp_path / "run", iterations=4, progress=False, tta=False)
    model = load_model(tmp_path / "run" / "train" / "best.safetensors")

    def maps(samples):
        items = training_images(samples, model_config=model.config, train_config=TrainConfig())
        return [(item.name, item.labels, predict_tiled(model, item.image)[1]) for item in items]

    chosen, candidates = select_postprocess(maps(split.val), metric="seg")  # on validation only
    assert [row["threshold"] for row in candidates][:2] == [0.5, 0.4]  # POSTPROCESS_GRID's order
    recorded = results["postprocess_chosen_on_validation"]
    assert recorded["selected_by"] == "seg on the 1 validation images"
    assert recorded["candidates"] == candidates
    assert (recorded["threshold"], recorded["min_seed_prominence_px"], recorded["distance_sigma_px"]) == (
        chosen.threshold, chosen.min_seed_prominence_px, chosen.distance_sigma_px)
    test = maps(split.test)
    assert recorded["test"] == evaluate(test, metrics="ctc,instance", postprocess=chosen).overall
    assert results["overall"]["seg"] == evaluate(test, metrics="ctc,instance").overall["seg"]
    assert f"--threshold {chosen.threshold:g} --seed-prominence" in reproduce.format_results(results)


@pytest.mark.data
def test_dsb_protocol_shows_nuclei_bright_unless_the_config_says_otherwise(data_root, tmp_path, tiny_preset, caplog):
    from biounet.weightfile import stored_preprocessing

    split = protocols.dsb2018_split(data_root / "dsb2018")
    split = protocols.Split(train=split.train[:2], val=split.val[:1], test=split.test[:1])
    results = reproduce.run_experiment("dsb2018", split, tmp_path / "a", iterations=2, progress=False, tta=False)
    assert results["config"]["train"]["polarity"] == "bright_objects"
    assert stored_preprocessing(tmp_path / "a" / "train" / "best.safetensors")["polarity"] == "bright_objects"
    assert "post-processing chosen by ap_50 on the 1 validation images (" in reproduce.format_results(results)
    kept = reproduce.run_experiment(
        "dsb2018", split, tmp_path / "b", iterations=2, progress=False, tta=False,
        overrides={"train": {"polarity": "as_is"}},
    )
    assert kept["config"]["train"]["polarity"] == "as_is"
    assert "training with polarity as_is from --config, not bright_objects" in caplog.text


def test_the_choice_on_validation_does_not_change_the_score(tmp_path, rng, tiny_preset, monkeypatch):
    import biounet.evaluation as evaluation
    from biounet.postprocess import PostprocessConfig

    write_ctc(tmp_path / "data" / "PhC-C2DH-U373", rng)
    split = protocols.ctc_split(tmp_path / "data", "PhC-C2DH-U373")
    strict = PostprocessConfig(threshold=0.999)  # keeps next to nothing: SEG falls
    monkeypatch.setattr(evaluation, "select_postprocess", lambda pairs, metric: (strict, [{"threshold": 0.999}]))
    results = reproduce.run_experiment("ctc", split, tmp_path / "run", iterations=2, progress=False, tta=False)
    recorded = results["postprocess_chosen_on_validation"]
    assert recorded["threshold"] == 0.999
    assert recorded["test"]["seg"] < results["overall"]["seg"]


def test_each_protocol_trains_as_long_as_the_readme_figures_unless_told():
    cpu = protocols.CPU_ITERATIONS
    assert protocols.protocol_iterations("dsb2018", "cpu", None, None) == cpu["dsb2018"]
    assert protocols.protocol_iterations("isbi2012", "cpu", None, {"train": {"seed": 1}}) == cpu["isbi2012"]
    assert protocols.protocol_iterations("dsb2018", "cpu", 5, None) == 5
    # a --config that names its iterations, the paper preset and ctc keep their own
    assert protocols.protocol_iterations("dsb2018", "cpu", None, {"train": {"iterations": 9}}) is None
    assert protocols.protocol_iterations("dsb2018", "paper", None, None) is None
    assert protocols.protocol_iterations("ctc", "cpu", None, None) is None


@pytest.mark.data
def test_dsb_protocol_scores_the_mean_of_its_two_networks(data_root, tmp_path, tiny_preset, capsys):
    from biounet.evaluation import evaluate
    from biounet.inference.predict import predict_tiled
    from biounet.weightfile import load_model

    split = protocols.dsb2018_split(data_root / "dsb2018")
    split = protocols.Split(train=split.train[:2], val=split.val[:1], test=split.test[:2])
    results = reproduce.run_experiment("dsb2018", split, tmp_path / "run", iterations=2, progress=False, tta=False,
                                       two_networks=True)
    members = results["members"]
    assert list(members) == ["train", "train_unweighted"]
    assert [member["class_weights"] for member in members.values()] == ["balanced", None]
    saved = json.loads((tmp_path / "run" / "train_unweighted" / "config.json").read_text())
    assert saved["train"]["class_weights"] is None and saved["train"]["w0"] == 10.0
    # the score is that of the two best models' mean map, predicted the obvious way
    models = [load_model(tmp_path / "run" / name / "best.safetensors") for name in members]
    config = protocols.protocol_config("dsb2018", "cpu", 2, None)
    test = reproduce._images(split.test, config)
    pairs = []
    for item in test:
        maps = [predict_tiled(model, item.image)[1] for model in models]
        pairs.append((item.name, item.labels, (maps[0] + maps[1]) / 2))
    expected = evaluate(pairs, metrics="ctc,instance").overall
    assert results["overall"]["ap_50"] == pytest.approx(expected["ap_50"])
    assert results["overall"]["seg"] == pytest.approx(expected["seg"], abs=1e-6)
    alone = evaluate([(n, t, predict_tiled(models[1], item.image)[1]) for (n, t, _), item in zip(pairs, test)],
                     metrics="ctc,instance").overall
    assert members["train_unweighted"]["overall"]["seg"] == pytest.approx(alone["seg"], abs=1e-6)
    assert "network train_unweighted alone (class_weights None)" in reproduce.format_results(results)
    # one network by default; --two-networks trains both from the command line
    assert main(["reproduce", "dsb2018", "--data", str(data_root / "dsb2018"), "--out", str(tmp_path / "one"),
                 "--iterations", "1", "--quiet", "--no-tta"]) == 0
    assert not (tmp_path / "one" / "train_unweighted").exists()
    assert "members" not in json.loads((tmp_path / "one" / "results.json").read_text())
    assert main(["reproduce", "dsb2018", "--data", str(data_root / "dsb2018"), "--out", str(tmp_path / "two"),
                 "--iterations", "1", "--two-networks", "--quiet", "--no-tta"]) == 0
    assert (tmp_path / "two" / "train_unweighted" / "best.safetensors").is_file()
    capsys.readouterr()


def test_two_networks_is_refused_where_the_protocol_has_one(tmp_path, capsys):
    code = main(["reproduce", "isbi2012", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--two-networks"])
    assert code == 2
    assert "--two-networks applies to dsb2018 only, got isbi2012" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
