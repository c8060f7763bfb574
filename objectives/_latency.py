"""How long a network takes to answer: the median time of one image and of a batch.

Parameters and MACs are properties of the spec; latency is a property of the spec *on a
machine*: the same MACs run at very different speeds depending on the layer types, the memory
they move and the threads. Users who deploy to a CPU or a phone care about the milliseconds, so
a study can minimise them (``study.complexity: latency``). The weights do not change the
time, so an untrained network of the spec is timed, before any training.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cnnas.models import ArchSpec, build

__all__ = ["BACKENDS", "Latency", "measure_latency"]

# torch: the network as PyTorch runs it (eager, inference mode); onnxruntime: exported to ONNX
# (the graph a phone or a server runtime would load) and run by ONNX Runtime's CPU provider.
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Latency:
    """Median milliseconds of one forward pass, for one image and for a batch."""

    single_ms: float
    batch_ms: float
    batch: int
    threads: int
    backend: str

    @property
    def per_image_in_batch_ms(self) -> float:
        return self.batch_ms / self.batch


def _median_ms(fn: Callable[[], object], budget: float, least: int, most: int) -> float:
    """Median wall time of ``fn`` in ms over at least ``least`` and at most ``most`` runs, as
    many as fit ``budget`` seconds (a large network is timed fewer times, not for longer)."""
    fn()  # warm-up: allocator, kernel selection, lazy initialisation
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < most and (len(times) < least or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def _torch_runner(net: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return net(x)

    return run


def _onnx_runners(
    net: torch.nn.Module, single: torch.Tensor, batch: torch.Tensor, threads: int
) -> tuple[Callable[[], object], Callable[[], object]]:
    import tempfile
    from pathlib import Path

    try:
        import onnxruntime as ort
    except ImportError as e:  # an optional dependency
        raise RuntimeError(
            "latency.backend onnxruntime needs onnxruntime, onnx and onnxscript: "
            "pip install onnxruntime onnx onnxscript"
        ) from e
    dim = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        net, (single,), dynamo=True, dynamic_shapes=({0: dim},), verbose=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        program.save(path, external_data=False)
        model = path.read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    one, many = single.numpy(), batch.numpy()
    return (lambda: session.run(None, {name: one})), (lambda: session.run(None, {name: many}))


def measure_latency(
    spec: ArchSpec,
    *,
    threads: int = 1,
    batch: int = 32,
    backend: str = "torch",
    budget: float = 0.3,
) -> Latency:
    """Times the network of ``spec`` on this machine with ``threads`` intra-op threads.

    Each of the two timings (one image, a batch of ``batch``) takes at most about ``budget``
    seconds after one warm-up run, at least 3 runs, at most 50. The thread setting of the
    process is restored afterwards.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; known: {', '.join(BACKENDS)}")
    net = build(spec).eval()
    g = torch.Generator().manual_seed(0)
    single = torch.randn(1, *spec.input_shape, generator=g)
    many = torch.randn(batch, *spec.input_shape, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if backend == "torch":
            one, lots = _torch_runner(net, single), _torch_runner(net, many)
        else:
            one, lots = _onnx_runners(net, single, many, threads)
        single_ms = _median_ms(one, budget, 3, 50)
        batch_ms = _median_ms(lots, budget, 3, 50)
    finally:
        torch.set_num_threads(before)
    return Latency(single_ms, batch_ms, batch, threads, backend)
