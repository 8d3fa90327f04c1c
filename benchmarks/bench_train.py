"""Training step with the full data pipeline (workers, weight maps, augmentation) vs bare,
and with the skeleton recall term.

Both run the `cpu` preset's network, tile and batch on the same tiles; the bare loop
feeds tiles prepared beforehand, so the difference is what the pipeline costs the step.
"""

from __future__ import annotations

import time

import torch

N_STEPS = 20


def _items():
    from biounet.data.dataset import make_training_image
    from biounet.datasets.synthetic import generate_dataset
    from biounet.training.presets import preset

    config = preset("cpu")
    pairs = generate_dataset(4, (512, 512), rng=0)
    return config, [
        make_training_image(f"s{i}", image[None], labels, model_config=config.model,
                            train_config=config.train)
        for i, (image, labels) in enumerate(pairs)
    ]


def run() -> list[dict]:
    from biounet.data.dataset import TileDataset
    from biounet.losses import skeleton_recall, target_skeletons, weighted_cross_entropy
    from biounet.model.unet import UNet
    from biounet.training.trainer import build_optimizer

    config, items = _items()
    train = config.train
    dataset = TileDataset(items, model_config=config.model, tile_shape=train.tile_shape,
                          length=(N_STEPS + 2) * train.batch_size, seed=0,
                          augment_config=config.augment)
    torch.manual_seed(0)
    model = UNet(config.model)
    optimizer = build_optimizer(model, train)

    def step(image, target, weights, bfloat16=False, skeleton=False):
        with torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):  # TrainConfig.precision
            logits = model(image)
        loss = weighted_cross_entropy(logits.float(), target, weights)
        if skeleton:  # TrainConfig.skeleton_recall, as the trainer adds it
            skeletons = target_skeletons(target, config.model.n_classes)
            loss = loss + 2.0 * skeleton_recall(logits.float(), skeletons)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def make_loader(workers: int):
        return torch.utils.data.DataLoader(
            dataset, batch_size=train.batch_size, num_workers=workers,
            worker_init_fn=lambda _: torch.set_num_threads(1))

    def piped_seconds(workers: int) -> float:
        start = time.perf_counter()
        for index, batch in enumerate(make_loader(workers)):
            if index >= 2:
                step(*batch)
            elif index == 1:
                start = time.perf_counter()
        return (time.perf_counter() - start) / N_STEPS

    batches = list(make_loader(train.workers))  # also the tiles for the bare loop
    for batch in batches[:2]:
        step(*batch)  # warm-up
    start = time.perf_counter()
    for batch in batches[2:]:
        step(*batch)
    bare = (time.perf_counter() - start) / N_STEPS
    step(*batches[0], bfloat16=True)  # warm-up of the bfloat16 kernels
    start = time.perf_counter()
    for batch in batches[2:]:
        step(*batch, bfloat16=True)
    bare_bf16 = (time.perf_counter() - start) / N_STEPS
    start = time.perf_counter()
    for batch in batches[2:]:
        step(*batch, skeleton=True)
    bare_skeleton = (time.perf_counter() - start) / N_STEPS
    piped = piped_seconds(train.workers)
    # on 2 cores a worker process competes with the step's threads; preparing tiles
    # in the main process between steps uses both cores for each in turn
    other_workers = 0 if train.workers else 1
    piped_other = piped_seconds(other_workers)
    started = time.perf_counter()
    for index in range(10):
        dataset[index]
    per_tile = (time.perf_counter() - started) / 10
    return [
        {"benchmark": f"cpu preset step, tile {train.tile_shape}, batch {train.batch_size}",
         "metric": "bare forward/backward", "value": bare, "unit": "s/step"},
        {"benchmark": "cpu preset step, precision bfloat16", "metric": "bare forward/backward",
         "value": bare_bf16, "unit": "s/step"},
        {"benchmark": "cpu preset step, precision bfloat16", "metric": "speed-up vs float32",
         "value": bare / bare_bf16, "unit": "x"},
        {"benchmark": "cpu preset step, skeleton_recall term", "metric": "overhead vs bare",
         "value": bare_skeleton / bare - 1, "unit": "fraction"},
        {"benchmark": "cpu preset step", "metric": "with data pipeline", "value": piped,
         "unit": "s/step"},
        {"benchmark": f"cpu preset step, {train.workers} loader worker(s) (the preset)",
         "metric": "pipeline overhead", "value": piped / bare - 1,
         "unit": "fraction", "target": "<= 0.10"},
        {"benchmark": f"cpu preset step, {other_workers} loader worker(s)",
         "metric": "pipeline overhead", "value": piped_other / bare - 1, "unit": "fraction"},
        {"benchmark": "tile preparation (augment + crop), one tile", "metric": "time",
         "value": per_tile, "unit": "s"},
        {"benchmark": "cpu preset", "metric": "training tiles/s",
         "value": train.batch_size / piped, "unit": "tile/s"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)

