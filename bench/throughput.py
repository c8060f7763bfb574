"""Training throughput: cnnas's trainer against a minimal hand-written PyTorch loop.

Same model (built from one spec, same initial weights), same data (Fashion-MNIST as uint8 on the
device, normalised per batch), same optimiser and schedule, same number of steps, validation
after every epoch in both. The two are run alternately, several times, and the median of each is
compared, so a background load on a shared machine hits both alike. The last line is the ratio.

    python bench/throughput.py            # CPU, 12,800 training images, 2 epochs, 5 rounds
    python bench/throughput.py --device cuda --train 54000 --batch-size 512 --epochs 3
    python bench/throughput.py --compile --epochs 3   # does torch.compile pay back in a trial?
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cnnas.models import ArchSpec, ConvBlock, DenseLayer, build, count_macs, count_params
from cnnas.objectives import Batches, TrainConfig, cpu_has_bf16, fit, load_dataset

# The default Fashion-MNIST CNN of the benchmarks: two conv-pool pairs (seed 002) with BatchNorm,
# GAP-free flatten and one dense layer; about 56k parameters.
SPEC = ArchSpec(
    input_shape=(1, 28, 28),
    num_classes=10,
    blocks=(
        ConvBlock(16, 3, batch_norm=True, pool="max"),
        ConvBlock(32, 3, batch_norm=True, pool="max"),
    ),
    aggregation="flatten",
    dense=(DenseLayer(32, dropout=0.3),),
)


def raw_loop(
    data,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    compiled: bool = False,
    epoch_seconds: list[float] | None = None,
) -> float:
    """The reference: the shortest correct training loop. Returns seconds.

    ``compiled`` wraps the network in ``torch.compile``; ``epoch_seconds`` collects each epoch's
    time (the first compiled epoch includes compiling the train and eval graphs).
    """
    torch.manual_seed(seed)
    # The numerics and layout the trainer's 'auto' picks on this device, so that the two loops
    # do the same arithmetic: bf16 autocast on a GPU or a CPU with native bf16, NHWC tensors on
    # a GPU or an x86 CPU.
    amp = device.type == "cuda" or cpu_has_bf16()
    nhwc = device.type == "cuda" or torch.backends.mkldnn.is_available()
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    model = build(SPEC).to(device, memory_format=fmt)
    if compiled:
        model = torch.compile(model)
    c = SPEC.input_shape[0]
    mean = torch.tensor(data.mean, device=device).view(1, c, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, c, 1, 1)
    # The trainer's default recipe: AdamW and the one-cycle policy, stepped every batch.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = (len(data.train_y) // cfg.batch_size) * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=cfg.warmup
    )
    tx, ty = data.train_x.to(device), data.train_y.to(device)
    vx, vy = data.val_x.to(device), data.val_y.to(device)
    # Deterministic kernels as the trainer uses them (train.deterministic; on by default on the
    # CPU): in bf16 on this CPU they cost about 10% of the speed, in fp32 next to nothing.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic)
    _sync(device)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        epoch_start = time.perf_counter()
        model.train()
        for xb, yb in Batches(tx, ty, cfg.batch_size, shuffle=True, seed=seed, drop_last=True):
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                x = ((xb.float() - mean) / std).contiguous(memory_format=fmt)
                loss = F.cross_entropy(model(x), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():  # validation in fp32, as the trainer scores it
            for xb, yb in Batches(vx, vy, max(cfg.batch_size, 1024)):
                x = ((xb.float() - mean) / std).contiguous(memory_format=fmt)
                correct += (model(x).argmax(1) == yb).sum()
        float(correct)  # the validation accuracy, read once an epoch like the trainer's
        if epoch_seconds is not None:
            epoch_seconds.append(time.perf_counter() - epoch_start)
    _sync(device)
    torch.use_deterministic_algorithms(was_deterministic)
    return time.perf_counter() - start


def compile_payback(data, cfg: TrainConfig, device: torch.device, rounds: int) -> None:
    """Whether torch.compile pays back its compile time within one trial of ``cfg.epochs``.

    Eager and compiled raw loops alternate; each compiled run starts from a fresh
    ``torch.compile`` (a new trial builds a new network), after ``torch._dynamo.reset()`` and with
    Inductor's and AOTAutograd's on-disk caches off: in a study every trial is another
    architecture, so a cache filled by the same network's earlier rounds would flatter compiling.
    """
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False
    inductor_config.fx_graph_remote_cache = False
    functorch_config.enable_autograd_cache = False
    eager_epochs, first, later = [], [], []
    for r in range(rounds):
        raw_loop(data, cfg, device, r, epoch_seconds=eager_epochs)
        torch._dynamo.reset()  # noqa: SLF001 -- torch documents reset() here only
        times: list[float] = []
        raw_loop(data, cfg, device, r, compiled=True, epoch_seconds=times)
        first.append(times[0])
        later.extend(times[1:])
    eager = statistics.median(eager_epochs)
    steady = statistics.median(later) if later else float("nan")
    cost = statistics.median(first) - steady
    saving = eager - steady
    payback = f"{cost / saving:.1f} epochs" if saving > 0 else "never (no per-epoch saving)"
    print(
        f"torch.compile (raw loop): {steady:.2f}s/epoch against {eager:.2f}s eager; the first "
        f"epoch pays {cost:.1f}s of compiling; pays back after {payback} "
        f"(a trial here has {cfg.epochs})"
    )


def product(data, cfg: TrainConfig, seed: int) -> float:
    return fit(SPEC, data, cfg, seed=seed).seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--train", type=int, default=12800, help="training images (stratified subset)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="alternating runs of each")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile on the raw loop: its compile cost and per-epoch saving",
    )
    args = p.parse_args()

    device = torch.device(args.device)
    # The subset is split 90/10 like a study's; ask for enough that --train images remain.
    data = load_dataset("fashion-mnist", subset=round(args.train / 0.9), seed=0)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        deterministic=device.type == "cpu",
    )
    steps = len(data.train_y) // args.batch_size
    images = steps * args.batch_size * args.epochs
    print(
        f"model {SPEC.summary()}: {count_params(SPEC):,} params, {count_macs(SPEC):,} MACs/image; "
        f"{len(data.train_y)} train / {len(data.val_y)} val images, batch {args.batch_size}, "
        f"{args.epochs} epochs, device {device}, torch threads {torch.get_num_threads()}"
    )
    # Warm up both paths (allocator, kernel selection, lazy imports) before timing.
    warm = TrainConfig(**{**cfg.__dict__, "epochs": 1})
    raw_loop(data, warm, device, 0)
    product(data, warm, 0)

    raw_s, ours_s = [], []
    for r in range(args.rounds):
        raw_s.append(raw_loop(data, cfg, device, r))
        ours_s.append(product(data, cfg, r))
        print(f"round {r + 1}: raw loop {raw_s[-1]:.2f}s   cnnas trainer {ours_s[-1]:.2f}s")
    raw, ours = statistics.median(raw_s), statistics.median(ours_s)
    if args.compile:
        compile_payback(data, cfg, device, args.rounds)
    print(f"raw loop:      {images / raw:10.0f} train images/s  ({raw / args.epochs:.2f}s/epoch)")
    print(f"cnnas trainer: {images / ours:10.0f} train images/s  ({ours / args.epochs:.2f}s/epoch)")
    print(f"throughput ratio cnnas/raw: {raw / ours:.3f}")


if __name__ == "__main__":
    main()
