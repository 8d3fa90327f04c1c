"""Training: loss decreases, resume is exact, interrupts checkpoint, files are complete."""

import csv
import json
import logging

import numpy as np
import pytest
import torch

from biounet.augment.pipeline import AugmentConfig
from biounet.config import TrainConfig, UNetConfig
from biounet.data.dataset import make_training_image
from biounet.training.checkpoint import load_checkpoint
from biounet.training.trainer import Trainer
from biounet.weightfile import load_model

MODEL = UNetConfig(depth=2, base_channels=4)


def synthetic_items(rng, count=3):
    items = []
    for index in range(count):
        labels = np.zeros((64, 64), np.int32)
        for cell in range(1, 6):
            y, x = rng.integers(8, 56, size=2)
            labels[y - 6 : y + 6, x - 6 : x + 6] = cell
        image = np.where(labels > 0, 1.0, 0.0)[None] + rng.normal(0, 0.3, (1, 64, 64))
        items.append(make_training_image(f"s{index}", image.astype(np.float32), labels, model_config=MODEL, train_config=TrainConfig()))
    return items


AUGMENT = AugmentConfig(max_rotation_deg=10, elastic_sigma_px=2.0)


def make_trainer(tmp_path, items, iterations, augment=AUGMENT, **changes):
    options = dict(iterations=iterations, tile_shape=(60, 60), batch_size=2, optimizer="adam", learning_rate=3e-3, validate_every=5, checkpoint_every=5, workers=0, seed=7)
    options.update(changes)
    return Trainer(
        model_config=MODEL,
        train_config=TrainConfig(**options),
        augment_config=augment,
        train_images=items[:-1],
        val_images=items[-1:],
        run_dir=tmp_path,
        progress=False,
    )


def read_metrics(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_short_training_decreases_loss_and_writes_run_folder(tmp_path, rng):
    # no augmentation: a 4-channel network must learn the squares within 60 steps
    result = make_trainer(tmp_path, synthetic_items(rng), 60, augment=None, validate_every=20).fit()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(row["step"]) for row in rows] == [20, 40, 60]
    assert float(rows[-1]["loss"]) < 0.7 * float(rows[0]["loss"])
    assert result.best_score is not None and result.best_score > 0.5
    for name in ("config.json", "checkpoint.safetensors", "best.safetensors", "model.safetensors", "curves.png"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "overlays").glob("*.png"))
    assert json.loads((tmp_path / "config.json").read_text())["model"] == MODEL.to_dict()
    load_model(tmp_path / "best.safetensors")
    assert not list(tmp_path.glob(".*tmp"))


def test_resume_gives_the_same_weights(tmp_path, rng, caplog):
    items = synthetic_items(rng)
    make_trainer(tmp_path / "whole", items, 12).fit()
    make_trainer(tmp_path / "split", items, 5).fit()  # stops with a checkpoint at step 5
    resumed = make_trainer(tmp_path / "split", items, 12)
    with caplog.at_level(logging.WARNING, logger="biounet.training.trainer"):
        result = resumed.fit(resume=True)
    assert result.step == 12
    assert "at step 5: it was started for 5 iterations and now trains to 12" in caplog.text
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    for key, value in whole.model_state.items():
        torch.testing.assert_close(split.model_state[key], value, rtol=0, atol=1e-6)
    assert [r["step"] for r in split.extra["history"]] == [5, 10, 12]


def test_interrupt_writes_checkpoint(tmp_path, rng):
    trainer = make_trainer(tmp_path, synthetic_items(rng), 50)
    original = trainer._checkpoint
    calls = []

    def stop_after_first(*args):
        calls.append(args[2])
        original(*args)
        trainer._request_stop()

    trainer._checkpoint = stop_after_first
    result = trainer.fit()
    assert result.interrupted and result.step == 5
    assert load_checkpoint(tmp_path / "checkpoint.safetensors").step == 5


def test_cosine_schedule_resumes_exactly(tmp_path, rng):
    """The cosine learning rate is a function of the step: stop at 5 of 12, resume, equal."""
    from biounet.training.optim import learning_rate_at

    items = synthetic_items(rng)
    make_trainer(tmp_path / "whole", items, 12, lr_schedule="cosine").fit()
    stopped = make_trainer(tmp_path / "split", items, 12, lr_schedule="cosine")
    original = stopped._checkpoint

    def stop_at_first_checkpoint(*args):
        original(*args)
        stopped._request_stop()

    stopped._checkpoint = stop_at_first_checkpoint
    assert stopped.fit().step == 5
    assert make_trainer(tmp_path / "split", items, 12, lr_schedule="cosine").fit(resume=True).step == 12
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    for key, value in whole.model_state.items():
        torch.testing.assert_close(split.model_state[key], value, rtol=0, atol=1e-6)
    constant = make_trainer(tmp_path / "constant", items, 12)
    constant.fit()
    differs = load_checkpoint(tmp_path / "constant" / "checkpoint.safetensors").model_state
    assert any(not torch.equal(differs[key], value) for key, value in whole.model_state.items())
    config = TrainConfig(iterations=12, learning_rate=3e-3, lr_schedule="cosine")
    rates = [learning_rate_at(config, step) for step in range(12)]
    assert rates[0] == 3e-3 and all(a > b > 0 for a, b in zip(rates, rates[1:]))


def test_resume_with_other_config_is_refused(tmp_path, rng):
    items = synthetic_items(rng)
    make_trainer(tmp_path, items, 5).fit()
    with pytest.raises(ValueError, match="configuration differs"):
        make_trainer(tmp_path, items, 10, learning_rate=1e-2).fit(resume=True)


def test_validation_metrics_by_task(rng):
    from biounet.training.validation import SCORES

    (item,) = synthetic_items(rng, count=1)
    perfect = np.stack([1.0 - (item.target > 0), (item.target > 0)]).astype(np.float32)
    assert SCORES["foreground_iou"](perfect, item) == 1.0
    # the Rand error reads the ground truth as membranes (0) around cells (> 0), so the
    # perfect map for it is the labels' foreground, without the separation borders
    membranes = np.stack([1.0 - (item.labels > 0), (item.labels > 0)]).astype(np.float32)
    assert SCORES["rand"](membranes, item) == pytest.approx(1.0)
    empty = np.stack([np.ones_like(perfect[0]), np.zeros_like(perfect[0])])
    assert SCORES["ap50"](empty, item) == 0.0


def touching_balls(shape, rng, n_cells=6, radius=(6.0, 9.0), z_scale=3.0):
    """(Z, Y, X) instance labels of flattened balls (Z spacing `z_scale` px) that touch."""
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    nearest = np.full(shape, np.inf)
    for cell in range(1, n_cells + 1):
        centre = [rng.uniform(2, size - 2) for size in shape]
        distance = np.sqrt(((z - centre[0]) * z_scale) ** 2 + (y - centre[1]) ** 2
                           + (x - centre[2]) ** 2) / rng.uniform(*radius)
        inside = (distance < 1) & (distance < nearest)  # the nearer centre wins where balls meet
        labels[inside], nearest[inside] = cell, distance[inside]
    return labels


def test_3d_anisotropic_training_decreases_loss(tmp_path, rng):
    # Cicek et al. 2016 on an anisotropic stack: level 0 pools only Y and X
    model = UNetConfig(ndim=3, depth=2, base_channels=4, pool_z=(False, True))
    train = TrainConfig(iterations=20, tile_shape=(28, 44, 44), batch_size=1, optimizer="adam",
                        learning_rate=1e-2, validate_every=10, checkpoint_every=20, workers=0,
                        seed=1, sigma_px=2.0)
    items = []
    for index in range(2):
        labels = touching_balls((12, 48, 48), rng)
        image = (labels > 0)[None] + rng.normal(0, 0.3, (1, *labels.shape))
        items.append(make_training_image(f"v{index}", image.astype(np.float32), labels,
                                         model_config=model, train_config=train))
    assert items[0].weights.max() > 2.0  # eq. 2 in 3-D: the ridge between touching balls
    augment = AugmentConfig(ndim=3, elastic_sigma_px=(1.0, 3.0, 3.0), image_order=1)
    result = Trainer(model_config=model, train_config=train, augment_config=augment,
                     train_images=items[:1], val_images=items[1:], run_dir=tmp_path,
                     progress=False).fit()
    rows = read_metrics(tmp_path / "metrics.csv")
    losses = [float(row["loss"]) for row in rows]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
    assert result.best_score is not None and np.isfinite(result.best_score)
    assert any((tmp_path / "overlays").glob("*.png"))  # the middle Z slice
    loaded = load_model(tmp_path / "best.safetensors")
    assert loaded.config == model


def test_bfloat16_training_learns_resumes_exactly_and_differs_from_float32(tmp_path, rng):
    items = synthetic_items(rng)
    result = make_trainer(tmp_path / "bf16", items, 60, augment=None, validate_every=20, precision="bfloat16").fit()
    rows = read_metrics(tmp_path / "bf16" / "metrics.csv")
    assert float(rows[-1]["loss"]) < 0.7 * float(rows[0]["loss"])
    assert result.best_score is not None and result.best_score > 0.5
    # resume: stop at 5 of 12, continue, equal to the uninterrupted run
    make_trainer(tmp_path / "whole", items, 12, precision="bfloat16").fit()
    make_trainer(tmp_path / "split", items, 5, precision="bfloat16").fit()
    make_trainer(tmp_path / "split", items, 12, precision="bfloat16").fit(resume=True)
    make_trainer(tmp_path / "fp32", items, 12).fit()
    whole, split, fp32 = (
        load_checkpoint(tmp_path / name / "checkpoint.safetensors").model_state
        for name in ("whole", "split", "fp32")
    )
    for key, value in whole.items():
        assert value.dtype == torch.float32  # master weights stay float32
        torch.testing.assert_close(split[key], value, rtol=0, atol=1e-6)
    # bfloat16 products really ran: the weights differ from float32 training, but a little
    assert any(not torch.equal(fp32[key], value) for key, value in whole.items())
    for key, value in whole.items():
        assert (fp32[key] - value).abs().max() < 0.05, key


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="float16")


def test_resume_of_a_run_saved_before_a_field_existed(tmp_path, rng):
    """A checkpoint without a later TrainConfig field resumes with that field's default."""
    from biounet.training.checkpoint import save_checkpoint

    items = synthetic_items(rng)
    make_trainer(tmp_path, items, 5).fit()
    old = load_checkpoint(tmp_path / "checkpoint.safetensors")
    configs = json.loads(json.dumps(old.configs))
    del configs["train"]["precision"]  # as written before TrainConfig.precision existed
    trainer = make_trainer(tmp_path, items, 8)
    model = trainer_model(old)
    save_checkpoint(tmp_path / "checkpoint.safetensors", model=model[0], optimizer=model[1], step=old.step, configs=configs, extra=old.extra, rng_states=old.torch_rng_states)
    assert trainer.fit(resume=True).step == 8
    with pytest.raises(ValueError, match="configuration differs"):
        make_trainer(tmp_path, items, 9, precision="bfloat16").fit(resume=True)


def trainer_model(checkpoint):
    from biounet.model.unet import UNet
    from biounet.training.checkpoint import restore
    from biounet.training.optim import build_optimizer

    model = UNet(MODEL)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adam", learning_rate=3e-3))
    restore(checkpoint, model=model, optimizer=optimizer, rank=0)
    return model, optimizer


def test_boundary_class_network_learns_and_validates_with_interior_seeds(tmp_path, rng, monkeypatch):
    import biounet.training.validation as validation_module

    model = UNetConfig(depth=2, base_channels=4, n_classes=3, boundary_class=True)
    config = TrainConfig()
    items = []
    for index in range(3):
        labels = np.zeros((64, 64), np.int32)
        for cell, (y, x) in enumerate(((16, 16), (16, 28), (44, 40)), start=1):  # two touch
            labels[y - 6 : y + 6, x - 6 : x + 6] = cell
        image = np.where(labels > 0, 1.0, 0.0)[None] + rng.normal(0, 0.3, (1, 64, 64))
        items.append(make_training_image(f"b{index}", image.astype(np.float32), labels, model_config=model, train_config=config))
    seen = []
    original = validation_module.ap50_score

    def spy(probabilities, item, **options):
        seen.append((probabilities.shape[0], options))
        return original(probabilities, item, **options)

    monkeypatch.setitem(validation_module.SCORES, "ap50", spy)
    monkeypatch.setattr(validation_module, "ap50_score", spy)
    trainer = Trainer(
        model_config=model,
        train_config=TrainConfig(iterations=200, tile_shape=(60, 60), batch_size=2, optimizer="adam", learning_rate=3e-3, validate_every=50, checkpoint_every=50, workers=0, seed=7, validation_metric="ap50"),
        augment_config=None,
        train_images=items[:-1],
        val_images=items[-1:],
        run_dir=tmp_path,
        progress=False,
    )
    result = trainer.fit()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert float(rows[-1]["loss"]) < 0.7 * float(rows[0]["loss"])
    assert result.best_score > 0  # objects found and matched through interior seeds
    assert seen and all(entry == (3, {"boundary_class": True}) for entry in seen)


def test_skeleton_recall_joins_the_loss_only_when_weighted(tmp_path, rng, monkeypatch):
    import biounet.training.trainer as trainer_module

    calls = []
    original = trainer_module.skeleton_recall

    def spy(scores, skeletons, **options):
        calls.append((scores.shape, skeletons, options))
        calls[-1] += (original(scores, skeletons, **options),)
        return calls[-1][-1]

    monkeypatch.setattr(trainer_module, "skeleton_recall", spy)
    items = synthetic_items(rng)
    off = make_trainer(tmp_path / "off", items, 1, augment=None, validate_every=1)
    off.fit()
    assert calls == []
    on = make_trainer(tmp_path / "on", items, 1, augment=None, validate_every=1, skeleton_recall=2.0)
    on.fit()
    assert len(calls) == 1
    shape, skeletons, options, term = calls[0]
    assert shape == skeletons.shape and shape[:2] == (2, 2) and options == {"across_ranks": False}
    assert skeletons[:, 1].sum() > 0 and term.requires_grad  # the squares have skeletons
    # same tiles, same start: the logged loss is cross-entropy + 2 x the term
    loss_off, loss_on = (float(read_metrics(tmp_path / name / "metrics.csv")[0]["loss"]) for name in ("off", "on"))
    assert loss_on == pytest.approx(loss_off + 2.0 * term.item(), rel=1e-5)
    # and its gradient moved the weights (a detached term would leave them bit-equal)
    off_state, on_state = off.model.state_dict(), on.model.state_dict()
    assert any(not torch.equal(off_state[key], on_state[key]) for key in off_state)


@pytest.mark.parametrize(("value", "error"), [(-0.5, ValueError), ("1", TypeError), (float("nan"), ValueError), (float("inf"), ValueError)])
def test_skeleton_recall_weight_is_checked(value, error):
    with pytest.raises(error, match="skeleton_recall must be"):
        TrainConfig(skeleton_recall=value)


def test_ap50_validation_measures_distance_seeds_with_the_run_spacing(tmp_path):
    from types import SimpleNamespace

    import biounet.training.validation as validation_module

    z, y, x = np.mgrid[0:16, 0:32, 0:32].astype(float)
    labels = np.zeros(z.shape, np.int32)
    for cell, centre in enumerate((5.5, 9.5), start=1):  # stacked 4 sections of 4 px apart
        labels[(((z - centre) * 4) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 100) & (labels == 0)] = cell
    foreground = np.clip((labels > 0).astype(np.float32), 0.05, 0.95)
    probabilities = np.stack([1 - foreground, foreground])
    item = SimpleNamespace(labels=labels)
    assert validation_module.ap50_score(probabilities, item) == 0.5  # one slab in voxels
    model = UNetConfig(ndim=3, depth=1, base_channels=2)
    trainer = Trainer(model_config=model, train_config=TrainConfig(validation_metric="ap50", spacing=(4.0, 1.0, 1.0)),
                      augment_config=None, train_images=[], val_images=[], run_dir=tmp_path, progress=False)
    assert trainer.score(probabilities, item) == 1.0


def test_closed_rand_validation_scores_the_map_with_its_gaps_closed(tmp_path):
    from types import SimpleNamespace

    import biounet.training.validation as validation_module
    from biounet.boundaries import close_boundaries
    from biounet.metrics.isbi import rand_error

    labels = np.ones((20, 31), np.int32)
    labels[:, 16:] = 2
    labels[:, 15] = 0  # the membrane, as ISBI labels it
    # the membrane predicted 3 px wide, with a faint stretch: at every threshold either the
    # cells touch or the cell pixels beside the membrane count as segments of their own
    foreground = np.full(labels.shape, 0.9, np.float32)
    foreground[:, 14:17] = 0.1
    foreground[:, 15] = 0.05
    foreground[8:11, 14:17] = 0.3
    probabilities = np.stack([1 - foreground, foreground])
    item = SimpleNamespace(labels=labels)
    raw, closed = validation_module.rand_score(probabilities, item), validation_module.closed_rand_score(probabilities, item)
    assert closed == 1.0 - rand_error(labels, close_boundaries(foreground)).value
    assert raw < 0.95 and closed == 1.0
    trainer = Trainer(model_config=UNetConfig(), train_config=TrainConfig(validation_metric="closed_rand"),
                      augment_config=None, train_images=[], val_images=[], run_dir=tmp_path, progress=False)
    assert trainer.score is validation_module.closed_rand_score
    for model in (UNetConfig(n_classes=3, boundary_class=True), UNetConfig(n_classes=3)):
        with pytest.raises(ValueError, match="closed_rand closes the membranes of a two-class"):
            Trainer(model_config=model, train_config=TrainConfig(validation_metric="closed_rand"),
                    augment_config=None, train_images=[], val_images=[], run_dir=tmp_path, progress=False)


def test_weight_files_record_normalization_and_polarity(tmp_path, rng):
    from biounet.weightfile import stored_preprocessing

    make_trainer(
        tmp_path, synthetic_items(rng), 5, augment=None, normalization="zscore", polarity="bright_objects"
    ).fit()
    for name in ("best.safetensors", "model.safetensors"):
        assert stored_preprocessing(tmp_path / name) == {"normalization": "zscore", "polarity": "bright_objects"}
