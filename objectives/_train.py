"""Scoring one architecture: a LightningModule around ``models.build(spec)`` and a fit function.

The network is a plain ``nn.Module``; this file only trains and measures it. It takes callbacks
and loggers from its caller and knows nothing of Optuna storages or MLflow runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerStatus

from cnnas.models import ArchSpec, build, count_macs, count_params, stage_macs

from ._augment import Augment, augment
from ._batches import Batches, on_device
from ._data import ImageData
from ._schedule import PlannedSchedule, epochs_that_fit

# Lightning sets its loggers to INFO on import and then announces the accelerator and tips on every
# fit; a study runs hundreds of fits and shows its own progress instead.
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__all__ = [
    "ACCELERATORS",
    "MEMORY_FORMATS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "Classifier",
    "TrainConfig",
    "TrialResult",
    "confusion_matrix",
    "cpu_has_bf16",
    "epoch_seconds",
    "evaluate",
    "fit",
    "logits_in_batches",
]

ACCELERATORS = ("auto", "cpu", "gpu")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
# How conv activations and weights are laid out in training: channels_last (NHWC) or contiguous
# (NCHW); auto is channels_last on a GPU and on a CPU with oneDNN (x86), see Classifier.
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
OPTIMIZERS = ("adam", "adamw", "sgd")
# plateau: the learning rate decays when validation accuracy stops improving (the seeds' recipe);
# cosine: linear warm-up, then a cosine to zero over the planned steps; onecycle: PyTorch's
# one-cycle policy (warm-up to lr, then annealing); constant: lr throughout.
SCHEDULES = ("plateau", "cosine", "onecycle", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """How one architecture is trained; the same for every trial of a study."""

    # Passes over the training split.
    epochs: int = 3
    # Images per optimisation step.
    batch_size: int = 128
    # The default recipe is the one bench/recipes.py measured best at a search trial's length
    # (3 epochs): AdamW to a peak of 4e-3 with the one-cycle policy, 5.4 points of validation
    # accuracy above the papers' Adam 1e-3 with plateau decay on average, best on 4 of 6
    # architectures. The papers' recipe stays selectable (optimizer adam, lr 1e-3, plateau).
    # The optimiser: Adam (the papers'), AdamW (decoupled weight decay) or SGD with Nesterov
    # momentum 0.9.
    optimizer: str = "adamw"
    # Learning rate (the peak one for cosine and onecycle).
    lr: float = 4e-3
    # Weight decay: an L2 penalty for Adam and SGD, decoupled for AdamW.
    weight_decay: float = 5e-4
    # How the learning rate moves over the fit (see SCHEDULES).
    schedule: str = "onecycle"
    # plateau: multiply by lr_factor after lr_patience epochs without improvement.
    lr_factor: float = 0.5
    lr_patience: int = 1
    # cosine and onecycle: the share of all steps spent warming up, in [0, 0.5].
    warmup: float = 0.25
    # Label smoothing of the training loss, in [0, 0.5); 0: plain cross-entropy. Reported losses
    # are always the plain cross-entropy, so they compare across recipes.
    label_smoothing: float = 0.0
    # Stop the fit after this many seconds of training (None: no limit). A safety net for
    # budgeted training; the schedule still plans for ``epochs``.
    max_seconds: float | None = None
    # Train for about this many seconds (None: for ``epochs``). ``epochs`` is then the first plan
    # only: after every epoch the trainer plans again the epochs that fit the time left at the
    # pace of the epoch just ended (at most ``max_epochs``), and the onecycle and cosine schedules
    # stretch or shrink to end at the last of them, so a network trained to a deadline ends
    # annealed, whatever the machine's speed. Results then depend on that speed too.
    time_budget: float | None = None
    # The most epochs a fit with a time budget may plan.
    max_epochs: int = 1000
    # Seed of initialisation and batch order; a trial adds its number to it.
    seed: int = 0
    # Where to train: 'auto' takes a GPU when there is one.
    accelerator: str = "auto"
    # Numeric precision; 'auto' is bf16-mixed on a GPU, and on a CPU with native bf16 kernels
    # (AVX512-BF16 or AMX) for networks without depthwise convolutions; 32-true otherwise.
    # Validation is always scored in fp32.
    precision: str = "auto"
    # Layout of the network's tensors in training (see MEMORY_FORMATS).
    memory_format: str = "auto"
    # Deterministic kernels: the same seed gives the same numbers (slower on GPUs).
    deterministic: bool = True
    # Augmentation of training batches, on the device; off by default.
    augment: Augment = field(default_factory=Augment)


@dataclass(frozen=True)
class TrialResult:
    """What training one architecture measured. Accuracies are fractions in [0, 1]."""

    val_acc: float
    val_loss: float
    train_acc: float
    train_loss: float
    params: int
    macs: int
    # Seed 003's complexity ratio: validation accuracy per parameter.
    ratio: float
    # Wall-clock seconds of the fit, validation included.
    seconds: float
    epochs: int
    # Per-epoch values: train_loss, train_acc, val_loss, val_acc, lr, epoch_seconds, and for a
    # multi-head network val_acc_head0, val_acc_head1, ... (the main head first); for an
    # adaptive-depth network val_acc_exit1, val_acc_exit2, ... (each exit alone, stage order)
    # and val_executed_macs.
    curves: dict[str, list[float]]
    # Average MACs per validation image actually executed: for an adaptive-depth network, the
    # stages and exits each image ran (its val_acc is that of the adaptive prediction); for any
    # other, ``macs``. None when constructing means ``macs``.
    executed_macs: float | None = None
    # The trained network, in eval mode on the CPU. Not part of the record.
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.executed_macs is None:
            object.__setattr__(self, "executed_macs", float(self.macs))

    def metrics(self) -> dict[str, float]:
        """The final scalar metrics, for trial attributes and run metrics."""
        # Not dataclasses.asdict: it would deep-copy the trained model.
        return {
            f.name: float(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("curves", "model")
        }


class Classifier(pl.LightningModule):
    """Trains a ``models.CNN`` on uint8 batches, normalising them on the device.

    Metrics are summed in device tensors during an epoch and read once at its end: a ``.item()``
    or a ``self.log`` per step would synchronise a GPU every step.
    """

    def __init__(
        self, spec: ArchSpec, cfg: TrainConfig, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.net = build(spec)
        self.cfg = cfg
        c = spec.input_shape[0]
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), False)
        self.curves: dict[str, list[float]] = {
            k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds")
        }
        self._sums: dict[str, torch.Tensor] = {}
        self._epoch_start = 0.0
        self._fit_start = 0.0
        self._schedule: PlannedSchedule | None = None
        self._steps_per_epoch = 1
        self._channels_last = False
        # MACs of stopping at each exit, to turn the validation images' exit counts into MACs.
        self._stage_macs = stage_macs(spec)

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        # NHWC tensors let cuDNN use its tensor-core kernels for convolutions on a GPU, and
        # oneDNN its blocked ones on an x86 CPU: measured with bench/precision.py on a 2-core
        # AVX-512 CPU, whole epochs in fp32, 1.11x (LeNet-5) to 1.68x (MobileNet-style) NCHW's.
        fmt = self.cfg.memory_format
        if fmt == "channels_last" or (
            fmt == "auto"
            and (
                self.device.type == "cuda"
                or (self.device.type == "cpu" and torch.backends.mkldnn.is_available())
            )
        ):
            self.net.to(memory_format=torch.channels_last)
            self._channels_last = True

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))

    def _smoothing(self, prefix: str) -> float:
        return self.cfg.label_smoothing if prefix == "train_" and self.training else 0.0

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The optimised cross-entropy, label-smoothed in training when the recipe says so."""
        return F.cross_entropy(logits, y, label_smoothing=self._smoothing("train_"))

    def _add(self, key: str, value: torch.Tensor | int) -> None:
        self._sums[key] = self._sums.get(key, 0) + value

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> torch.Tensor:
        x, y = batch
        x = x.float()
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if prefix == "train_" and self.cfg.augment.active:
            x = augment(x, self.cfg.augment)
        if self.net.spec.adaptive_depth:
            return self._adaptive_step(
                self.net.forward_exits((x - self.mean) / self.std), y, prefix
            )
        heads = self.net.forward_heads((x - self.mean) / self.std)
        # The optimised loss: the main head's, plus the extra heads' weighted (Kazinnik).
        loss = self._loss(heads[0], y)
        if len(heads) > 1:
            aux = sum(self._loss(h, y) for h in heads[1:])
            loss = loss + self.net.spec.aux_weight * aux
        with torch.no_grad():
            # The reported loss and accuracy are those of the network's prediction, so they
            # compare across single- and multi-head networks (and across label smoothing).
            pred = self.net.combine(heads)
            plain = len(heads) == 1 and not self._smoothing(prefix)
            shown = loss.detach() if plain else F.cross_entropy(pred.float(), y)
            n = y.numel()
            self._add(prefix + "loss", shown.float() * n)
            self._add(prefix + "correct", (pred.argmax(1) == y).sum())
            self._add(prefix + "n", n)
            if prefix == "val_" and len(heads) > 1:
                for i, h in enumerate(heads):
                    self._add(f"val_correct_head{i}", (h.argmax(1) == y).sum())
        return loss

    def _adaptive_step(
        self, exits: list[torch.Tensor], y: torch.Tensor, prefix: str
    ) -> torch.Tensor:
        # Every exit learns: the loss sums all exits' cross-entropies at full depth, so an early
        # exit is trained on every image, not only on those it will answer.
        loss = sum(self._loss(e, y) for e in exits)
        with torch.no_grad():
            # What is reported is the adaptive prediction, the one ``forward`` makes at eval time;
            # choose_exit reads it off the full-depth pass the loss needed anyway.
            pred, depths = self.net.choose_exit(exits)
            n = y.numel()
            self._add(prefix + "loss", F.cross_entropy(pred.float(), y) * n)
            self._add(prefix + "correct", (pred.argmax(1) == y).sum())
            self._add(prefix + "n", n)
            if prefix == "val_":
                self._add("val_exits", torch.bincount(depths - 1, minlength=len(exits)))
                for k, e in enumerate(exits):
                    self._add(f"val_correct_exit{k + 1}", (e.argmax(1) == y).sum())
        return loss

    def _executed_macs(self, n: int) -> dict[str, float]:
        if "val_exits" not in self._sums:
            return {}
        counts = self._sums.pop("val_exits").tolist()
        keys = sorted(k for k in self._sums if k.startswith("val_correct_exit"))
        out = {k.replace("correct", "acc"): float(self._sums.pop(k)) / n for k in keys}
        out["val_executed_macs"] = (
            sum(c * m for c, m in zip(counts, self._stage_macs, strict=True)) / n
        )
        return out

    def _epoch_means(self, prefix: str) -> tuple[float, float]:
        n = self._sums.pop(prefix + "n", 0)
        loss = self._sums.pop(prefix + "loss", torch.tensor(math.nan))
        correct = self._sums.pop(prefix + "correct", torch.tensor(0))
        if not n:
            return math.nan, math.nan
        return float(loss) / n, float(correct) / n

    def _head_accuracies(self, n: int) -> dict[str, float]:
        keys = sorted(k for k in self._sums if k.startswith("val_correct_head"))
        return {k.replace("correct", "acc"): float(self._sums.pop(k)) / n for k in keys}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train_")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # Scored in fp32 under any training precision: the recorded accuracy is the one the
        # saved (fp32) network gives the user, to the last image.
        with torch.autocast(self.device.type, enabled=False):
            self._step(batch, "val_")

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        # The whole epoch is recorded here: validation runs once the epoch's training steps are
        # done, and this hook precedes every callback's on_train_epoch_end, so progress and
        # pruning callbacks there see the epoch complete.
        if self.trainer.sanity_checking:
            return
        train_loss, train_acc = self._epoch_means("train_")
        n_val = int(self._sums.get("val_n", 0))
        loss, acc = self._epoch_means("val_")
        c = self.curves
        for key, value in self._head_accuracies(n_val).items():
            c.setdefault(key, []).append(value)
        if n_val:
            for key, value in self._executed_macs(n_val).items():
                c.setdefault(key, []).append(value)
        c["train_loss"].append(train_loss)
        c["train_acc"].append(train_acc)
        c["val_loss"].append(loss)
        c["val_acc"].append(acc)
        c["lr"].append(float(self.optimizers().param_groups[0]["lr"]))
        c["epoch_seconds"].append(time.perf_counter() - self._epoch_start)
        # Logged for the LR scheduler and for callbacks (pruning, progress): once per epoch.
        self.log_dict({"val_acc": acc, "val_loss": loss}, prog_bar=False, logger=False)
        if self.cfg.time_budget is not None:
            self._replan(len(c["val_acc"]), c["epoch_seconds"][-1])

    def _replan(self, done: int, epoch_seconds: float) -> None:
        """Plans the epochs that fit what is left of the time budget, at the pace of the epoch
        just ended (it reflects the machine as it is now), and stops when none does."""
        cfg = self.cfg
        elapsed = time.perf_counter() - self._fit_start
        budget = cfg.time_budget or 0.0
        epochs = epochs_that_fit(done, elapsed, budget, epoch_seconds, cfg.max_epochs)
        if epochs <= done:
            self.trainer.should_stop = True
        if self._schedule is not None:
            self._schedule.replan(max(epochs, done) * self._steps_per_epoch)

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        opt = _optimizer(cfg, self.parameters())
        if cfg.schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "monitor": "val_acc", "interval": "epoch"},
            }
        if cfg.schedule == "constant":
            return opt
        # Per step, over the steps of the planned epochs (with a time budget, Lightning's
        # max_epochs is only the cap; the plan is cfg.epochs until the first epoch is timed).
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        self._steps_per_epoch = max(steps // max(int(self.trainer.max_epochs or 1), 1), 1)
        planned = self._steps_per_epoch * cfg.epochs if cfg.time_budget is not None else steps
        self._schedule = PlannedSchedule(opt, cfg.schedule, planned, cfg.warmup)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self._schedule, "interval": "step"},
        }


def _optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer != "adam":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _DataModule(pl.LightningDataModule):
    """Hands Lightning in-memory batches of data already moved to the trainer's device."""

    def __init__(self, data: ImageData, batch_size: int, seed: int) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.tensors: dict[str, torch.Tensor] = {}

    def setup(self, stage: str) -> None:
        self.tensors = on_device(self.data, self.trainer.strategy.root_device)

    def train_dataloader(self) -> Batches:
        t = self.tensors
        return Batches(
            t["train_x"],
            t["train_y"],
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )

    def val_dataloader(self) -> Batches:
        # Evaluation holds no gradients, so larger batches cost nothing in memory terms.
        t = self.tensors
        return Batches(t["val_x"], t["val_y"], max(self.batch_size, 1024))


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls natively (oneDNN with AVX512-BF16 or
    AMX). Elsewhere bf16 is emulated and slower than fp32."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # torch has no public query for this; the private one may go: then fp32, as before.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # noqa: SLF001
    except (AttributeError, RuntimeError):
        return False


# Blocks built of depthwise convolutions, which oneDNN runs more slowly in bf16 than in fp32.
_DEPTHWISE = ("separable", "inverted")


def _precision(cfg: TrainConfig, spec: ArchSpec) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if cfg.accelerator != "cpu" and torch.cuda.is_available():
        return "bf16-mixed"
    # Measured with bench/precision.py on a 2-core AVX-512-BF16 CPU, whole epochs: bf16 with
    # NHWC ran 1.42x (LeNet-5) to 1.93x (ResNet-8) the speed of fp32 NCHW at the same test
    # accuracy, but a MobileNet-style network (depthwise convs) 0.98x, against 1.68x in fp32.
    if any(b.block_type in _DEPTHWISE for b in spec.blocks):
        return "32-true"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def _fit_interruptibly(trainer: pl.Trainer, module: pl.LightningModule, dm: Any) -> None:
    """``trainer.fit``, except that Ctrl-C stays a KeyboardInterrupt.

    Lightning turns Ctrl-C into ``sys.exit(1)`` and ignores SIGINT from then on; a caller that
    runs many trials must instead see the interrupt, record the trial, and stay interruptible.
    """
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=dm)
    except SystemExit as e:
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        raise KeyboardInterrupt from e
    finally:
        # signal.signal works in the main thread only; elsewhere Lightning could not set it.
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


def fit(
    spec: ArchSpec,
    data: ImageData,
    cfg: TrainConfig,
    *,
    seed: int | None = None,
    callbacks: Sequence[pl.Callback] = (),
    logger: Any = False,
) -> TrialResult:
    """Trains ``spec`` on ``data``'s training split and scores it on the validation split.

    The test split is never touched. The same ``seed`` (default ``cfg.seed``) gives the same
    result on the same machine.
    """
    if tuple(spec.input_shape) != data.input_shape or spec.num_classes != data.num_classes:
        raise ValueError(
            f"spec is for input {spec.input_shape} with {spec.num_classes} classes, but the "
            f"dataset {data.name!r} has {data.input_shape} and {data.num_classes}"
        )
    seed = cfg.seed if seed is None else seed
    pl.seed_everything(seed, workers=False, verbose=False)
    # cuDNN's autotuner picks the fastest kernel per shape, but not always the same one.
    torch.backends.cudnn.benchmark = not cfg.deterministic
    module = Classifier(spec, cfg, data.mean, data.std)
    dm = _DataModule(data, cfg.batch_size, seed)
    with warnings.catch_warnings():
        # Lightning warns that a non-DataLoader iterable has no workers: that is the point.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*`IterableDataset`.*")
        # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecated; nothing to act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        # On a machine with SLURM installed Lightning suggests srun for every fit; a study runs
        # one process per trial-runner and SLURM starts those itself (deploy/).
        warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
        trainer = pl.Trainer(
            accelerator=cfg.accelerator,
            devices=1,
            max_epochs=cfg.epochs if cfg.time_budget is None else max(cfg.max_epochs, 1),
            max_time=None if cfg.max_seconds is None else timedelta(seconds=cfg.max_seconds),
            precision=_precision(cfg, spec),
            deterministic=cfg.deterministic,
            logger=logger,
            callbacks=list(callbacks),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        _fit_interruptibly(trainer, module, dm)
    seconds = time.perf_counter() - start
    curves = module.curves
    epochs = len(curves["val_acc"])
    if epochs == 0:
        raise RuntimeError("training stopped before the first validation epoch ended")
    params, macs = count_params(spec), count_macs(spec)
    executed = curves["val_executed_macs"][-1] if spec.adaptive_depth else float(macs)
    val_acc = curves["val_acc"][-1]
    # Back to NCHW: what users, exporters and the MACs counter get is the plain layout.
    net = module.net.to("cpu", memory_format=torch.contiguous_format).eval()
    return TrialResult(
        val_acc=val_acc,
        val_loss=curves["val_loss"][-1],
        train_acc=curves["train_acc"][-1],
        train_loss=curves["train_loss"][-1],
        params=params,
        macs=macs,
        ratio=val_acc / params,
        seconds=seconds,
        epochs=epochs,
        curves={k: list(v) for k, v in curves.items()},
        executed_macs=executed,
        model=net,
    )


def epoch_seconds(
    spec: ArchSpec,
    data: ImageData,
    cfg: TrainConfig,
    *,
    fraction: int = 12,
    trainer: Callable[..., TrialResult] | None = None,
) -> float:
    """The seconds one epoch of ``spec`` on ``data`` takes, validation included, timed on this
    machine: three epochs on 1/``fraction`` of the training and validation images (at least
    one of each), the fastest of the last two (the first pays the trainer's set-up and the
    kernels' first runs), scaled to the whole training split. ``trainer``: what trains (``fit``
    unless a caller hands in its own)."""
    n = max(len(data.train_y) // fraction, 1)
    v = max(len(data.val_y) // fraction, 1)
    probe = dataclasses.replace(
        data,
        train_x=data.train_x[:n],
        train_y=data.train_y[:n],
        val_x=data.val_x[:v],
        val_y=data.val_y[:v],
    )
    timed = dataclasses.replace(cfg, epochs=3, max_seconds=None, time_budget=None)
    result = (trainer or fit)(spec, probe, timed)
    return min(result.curves["epoch_seconds"][1:]) * len(data.train_y) / n


@torch.no_grad()
def logits_in_batches(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 1024,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, labels)`` of ``model`` in eval mode on uint8 images, a batch at a time."""
    model.eval()
    device = next(model.parameters()).device
    c = x.shape[1]
    m = torch.tensor(mean, device=device).view(1, c, 1, 1)
    s = torch.tensor(std, device=device).view(1, c, 1, 1)
    for xb, yb in Batches(x, y, batch_size):
        yield model((xb.to(device).float() - m) / s), yb.to(device)


def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on uint8 images ``x`` with labels ``y``."""
    loss_sum, correct = 0.0, 0
    for logits, yb in logits_in_batches(model, x, y, mean, std, batch_size=batch_size):
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


@torch.no_grad()
def confusion_matrix(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
) -> tuple[float, torch.Tensor]:
    """Accuracy and the confusion matrix (rows: true class, columns: predicted) of uint8 images."""
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for logits, yb in logits_in_batches(model, x, y, mean, std):
        pred = logits.argmax(1).cpu()
        matrix.index_put_((yb.cpu(), pred), torch.ones_like(pred), accumulate=True)
    return float(matrix.diag().sum()) / max(len(y), 1), matrix
