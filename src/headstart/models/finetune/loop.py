"""The fine-tuning loop: epochs of AdamW/SGD over the trainable part, validated each epoch (or, for the refit on
all photos, a fixed number of epochs of the schedule validation chose).

Where the frozen stages are known (:func:`~headstart.models.finetune.frozen.split_network`), each photo's augmented views
go through them once (:class:`~headstart.models.finetune.frozen.ActivationBank`) and the epochs train only the tail; else
(an unknown architecture, ``unfreeze="all"``, torchrun) every epoch decodes, augments and runs the whole network.
Both paths share the optimiser, schedule, EMA, checkpoints and records. Each epoch reports its seconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart._console import progress as progress_bar
from headstart._console import say
from headstart._io import write_text_atomic
from headstart._threads import restores_torch_threads, size_torch_threads
from headstart.models.finetune.feeds import Cached, Streaming, labels_of
from headstart.models.finetune.frozen import split_network
from headstart.models.finetune.parts import (
    EpochRecord,
    Finetune,
    FinetuneResult,
    freeze_batchnorm,
    lr_factor,
    make_optimizer,
    plot_curves,
    trainable_groups,
    zero_head_weights,
)
from headstart.models.finetune.resume import NothingLeft, resumable, save_checkpoint
from headstart.models.finetune.stopping import Stopping, better, describe_stopping, scores

if TYPE_CHECKING:
    from headstart.data import Dataset

__all__ = ["CURVES_EVERY_S", "run_finetune"]

#: ``curves.png`` is redrawn after an epoch when it was last drawn this many seconds ago, and when the run ends.
CURVES_EVERY_S = 30.0


@restores_torch_threads
def run_finetune(
    network,
    train_data: Dataset,
    val_data: Dataset | None,
    classes: list[str],
    data_config: dict[str, Any],
    config: Finetune,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = False,
    device: str = "cpu",
    flip_average: bool = False,
    spec: Any = None,
    hashes: dict[str, str] | None = None,
    stop_after: int | None = None,
    name: str = "",
    keep_start: bool = True,
    zero_head: bool = False,
) -> FinetuneResult:
    """Train ``network`` (trunk + head) on ``train_data``; with ``val_data``, validate each epoch and keep the best.

    ``config`` must be resolved (:meth:`Finetune.for_data_size`). Validation scores what a saved model computes:
    the head over the mean features of each photo and its mirror image when ``flip_average``. Without
    ``val_data`` (the refit on all photos) it runs ``stop_after`` epochs of the ``config.epochs`` schedule and
    keeps the last. Early stopping and the epoch kept follow :mod:`~headstart.models.finetune.stopping`
    (``keep_start`` False: epoch 0, a random start, is scored but never kept; ``zero_head``: epoch 0 is scored
    with the head given, which is then zeroed to learn with the trunk: epoch 0 is neither kept nor watched, and its
    logits are the result's ``start_logits``). ``spec`` (the pretrained backbone) lets fits in one process share
    the frozen stages' activations; ``hashes`` maps photo paths to their content hashes (computed when missing).

    With ``run_dir``, each epoch appends to ``{name}metrics.jsonl``, replaces ``{name}checkpoint.pt`` (from which
    ``resume=True`` continues: a run that had stopped early, or trained all its epochs, trains none and computes no
    frozen stages) and redraws ``{name}curves.png`` (:data:`CURVES_EVERY_S`); without it nothing is written. Under
    torchrun only rank 0 writes.
    """
    import torch

    from headstart._distributed import all_reduce_sum, current
    from headstart.features import default_precision

    if resume and run_dir is None:
        raise ValueError("resume=True continues from the checkpoint in a run folder; pass run_dir (the folder).")
    group = current()
    run = Path(run_dir) if run_dir is not None else None
    writes = run is not None and group.is_main
    epochs = config.epochs if stop_after is None else min(int(stop_after), config.epochs)
    torch.manual_seed(config.seed)
    precision = default_precision(device) if config.precision == "auto" else config.precision

    def autocast():
        return torch.autocast(
            device_type=device.split(":")[0],
            dtype=torch.bfloat16,
            enabled=precision == "bf16",
        )

    generator = torch.Generator().manual_seed(config.seed)
    network = network.to(device)
    if device == "cpu":
        network = network.to(memory_format=torch.channels_last)
    trainable_groups(network, config.unfreeze)
    validating = val_data is not None
    checkpoint = run / f"{name}checkpoint.pt" if run is not None else None
    state = (
        resumable(checkpoint, device, validating=validating, schedule=config.epochs, epochs=epochs) if resume else None
    )
    history = [EpochRecord(**r) for r in json.loads(state["history"])] if state is not None else []
    watch = Stopping.replayed(config.patience if validating else 0, history, first=1 if zero_head else 0)
    done = state is not None and (watch.stopped_after is not None or int(state["epoch"]) + 1 >= epochs)
    split = None if group.enabled or done else split_network(network, config.unfreeze)
    data = NothingLeft(network, labels_of(val_data, classes)) if done else None
    if split is not None:
        data = Cached.build(
            split,
            train_data,
            val_data,
            classes,
            data_config,
            config,
            spec,
            hashes,
            precision,
            device,
            generator,
            epochs,
            progress and group.is_main,
        )
    if data is None:
        data = Streaming(network, train_data, val_data, classes, data_config, config, group, device, generator)
    optimizer = make_optimizer(network, config)
    forward = data.module
    if group.enabled:  # gradients averaged over processes; every process keeps identical weights
        forward = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[torch.device(device).index] if device.startswith("cuda") else None
        )
    ema = None
    if config.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(network, decay=config.ema_decay)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    steps_per_epoch = data.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def judged_logits():
        judged = ema.module if ema is not None else network
        return data.validation_logits(judged, autocast, flip_average, config.unfreeze)

    best_acc, best_epoch, best_state, best_logits, start_epoch = -1.0, 0, None, None, 0
    start_logits = None
    if state is not None:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        start_epoch = epochs if done else min(int(state["epoch"]) + 1, epochs)
        best_acc, best_epoch, best_state = float(state["best_acc"]), int(state["best_epoch"]), state["best_state"]
        best_logits = state["best_logits"].numpy() if state.get("best_logits") is not None else None
        start_logits = state["start_logits"].numpy() if state.get("start_logits") is not None else None
        torch.set_rng_state(state["rng"].cpu())
        generator.set_state(state["loader_rng"].cpu())
        if progress and group.is_main:
            said = describe_stopping(watch.to_dict(epochs, best_epoch)) if validating else ""
            say(
                f"resuming {run}: {int(state['epoch']) + 1} of {epochs} {name}epochs done"
                + (f"; it had {said}: no epoch left to train" if watch.stopped_after is not None else "")
                + ("; nothing left to train" if done and watch.stopped_after is None else "")
            )

    def record_epoch(record: EpochRecord) -> None:  # (a resumed run rewrites the lines its checkpoint knows)
        history.append(record)
        if writes:
            write_text_atomic(run / f"{name}metrics.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in history))

    if start_epoch == 0 and validating:  # epoch 0 = the starting point (a fine-tune: the probe, the model to beat)
        size_torch_threads()
        logits, y = judged_logits()
        val_loss, val_acc = scores(logits, y)
        start_logits = logits
        if not zero_head:
            watch.update(0, val_loss)
        if keep_start and not zero_head:
            best_acc, best_epoch, best_logits = val_acc, 0, logits
            judged = ema.module if ema is not None else network
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        record_epoch(EpochRecord(0, None, None, val_loss, val_acc, 0.0, 0.0))
        if progress and group.is_main:
            say(f"epoch 0 (before fine-tuning): validation loss {val_loss:.3f} accuracy {val_acc:.3f}")
    if zero_head and start_epoch == 0:
        zero_head_weights(network)
    step = start_epoch * steps_per_epoch
    drawn, drawn_records = time.perf_counter(), len(history)  # when curves.png was last drawn, with how many records
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        size_torch_threads()  # the cores free now: a busy machine slows the epoch in proportion, not by a multiple
        network.train()
        if config.freeze_bn:
            freeze_batchnorm(network)
        if split is not None:
            split.freeze()
        data.set_epoch(epoch)
        seen, correct, loss_sum = 0, 0, 0.0
        with progress_bar(progress and group.is_main, steps_per_epoch, f"{name}epoch {epoch + 1}/{epochs}") as advance:
            for x, y in data.batches(epoch):
                factor = lr_factor(step, total_steps, warmup, config.schedule)
                for g in optimizer.param_groups:
                    g["lr"] = config.lr * g.get("lr_scale", 1.0) * factor
                x = x.to(device)
                if device == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    logits = forward(x)
                    loss = loss_fn(logits.float(), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in network.parameters() if p.requires_grad], config.clip_grad
                    )
                optimizer.step()
                if ema is not None:
                    ema.update(network, step=step)
                seen += len(y)
                correct += int((logits.detach().argmax(1).cpu() == y).sum())
                loss_sum += float(loss.detach()) * len(y)
                step += 1
                advance(1)
        seen, correct, loss_sum = all_reduce_sum([seen, correct, loss_sum])
        val_loss = val_acc = None
        if validating:
            logits, y = judged_logits()  # every process: the whole set
            val_loss, val_acc = scores(logits, y)
        record = EpochRecord(
            epoch + 1,
            loss_sum / max(1, seen),
            correct / max(1, seen),
            val_loss,
            val_acc,
            optimizer.param_groups[-1]["lr"],
            round(time.perf_counter() - started, 3),
        )
        record_epoch(record)
        improved = validating and better(logits, y, val_acc, best_logits, best_acc)
        if progress and group.is_main:
            said = f" | validation loss {val_loss:.3f} accuracy {val_acc:.3f}" if validating else ""
            say(
                f"{name}epoch {record.epoch}/{epochs}: train loss {record.train_loss:.3f} accuracy "
                f"{record.train_accuracy:.3f}{said} | lr {record.lr:.2g} | {record.seconds:.1f} s"
                + ("  (best so far)" if improved else "")
            )
        if improved:
            best_acc, best_epoch, best_logits = val_acc, epoch + 1, logits
            judged = ema.module if ema is not None else network
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        stop = validating and watch.update(epoch + 1, val_loss)
        if writes:  # only rank 0 writes files
            state = {
                "network": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "best_logits": None if best_logits is None else torch.from_numpy(best_logits),
                "start_logits": None if start_logits is None else torch.from_numpy(start_logits),
                "history": json.dumps([asdict(r) for r in history]),
                "rng": torch.get_rng_state(),
                "loader_rng": generator.get_state(),
                "schedule_epochs": config.epochs,
            }
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_checkpoint(checkpoint, state, epochs_done=epoch + 1, epochs=epochs, stopped_after=watch.stopped_after)
            if time.perf_counter() - drawn >= CURVES_EVERY_S:  # (a short run's curves are drawn once, at its end)
                plot_curves(history, run / f"{name}curves.png", kept=best_epoch if validating else None)
                drawn, drawn_records = time.perf_counter(), len(history)
        if stop:
            if progress and group.is_main:
                say(describe_stopping(watch.to_dict(epochs, best_epoch)))
            break
    if writes and len(history) > drawn_records:
        plot_curves(history, run / f"{name}curves.png", kept=best_epoch if validating else None)
    final = ema.module if ema is not None else network
    if validating and best_state is not None:
        final.load_state_dict(best_state)
    stopped = watch.stopped_after is not None
    result = FinetuneResult(final, history, best_epoch if validating else epochs, stopped)
    result.stopping = watch.to_dict(epochs, best_epoch) if validating else {}
    result.val_logits, result.start_logits = best_logits, start_logits
    result.val_labels = data.val_labels
    result.frozen = data.describe()
    return result
