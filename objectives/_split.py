"""Seeded stratified sampling: the one way every split of a dataset is made.

Every trial of a study must see exactly the same train/validation/test partition, so the draws
depend only on the labels, the fraction and the seed. Depends on torch only, so the readers
(digits carves its own test split) can use it without importing the loading code.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch

__all__ = ["check_fraction", "stratified_split", "stratified_subset"]


def check_fraction(value: object, name: str) -> float:
    """``value`` as a float strictly between 0 and 1; a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _stratified_pick(
    labels: torch.Tensor, quota: Callable[[Sequence[int]], list[int]], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``quota(class_counts)[i]`` random indices of the i-th class (ascending label order).

    Returns ``(rest, picked)``, both sorted ascending.
    """
    labels = torch.as_tensor(labels)
    if (
        labels.dim() != 1
        or labels.dtype == torch.bool
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
    ):
        raise ValueError(
            f"labels must be a 1-D integer tensor, got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    labels = labels.cpu()
    n = labels.numel()
    # A stable sort groups each class's indices in ascending order, so the draw depends only on
    # the labels and the seed (never on hash order or the number of classes per batch).
    order = torch.sort(labels, stable=True).indices
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    counts_list = counts.tolist()
    quotas = quota(counts_list)
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for group, k in zip(torch.split(order, counts_list), quotas, strict=True):
        perm = torch.randperm(len(group), generator=generator)
        picked.append(group[perm[:k]])
    picked_idx = torch.sort(torch.cat(picked)).values if picked else torch.empty(0)
    picked_idx = picked_idx.to(torch.int64)
    mask = torch.ones(n, dtype=torch.bool)
    mask[picked_idx] = False
    rest_idx = torch.nonzero(mask).flatten().to(torch.int64)
    return rest_idx, picked_idx


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices ``0..len(labels)-1`` class by class into ``(keep_idx, split_idx)``.

    For each class with ``n`` items, ``round(fraction * n)`` randomly chosen indices go to
    ``split_idx``, clamped so that every class keeps at least one item in ``keep_idx`` and
    every class with ``n >= 2`` items puts at least one into ``split_idx`` (a singleton class
    stays in ``keep_idx``). The draw uses a ``torch.Generator`` seeded with ``seed``: the same
    labels, fraction and seed give the same split on every machine (for a given torch version).

    Both results are int64, sorted ascending, disjoint, and together cover every index.

    Raises:
        ValueError: if ``fraction`` is not strictly between 0 and 1, or ``labels`` is not a
            1-D integer tensor.
    """
    fraction = check_fraction(fraction, "fraction")

    def quota(counts: Sequence[int]) -> list[int]:
        out = []
        for n in counts:
            # Clamping keeps every class on the training side, and gives validation a sample
            # of every class that can spare one.
            out.append(min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0)
        return out

    return _stratified_pick(labels, quota, seed)


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of exactly ``size`` items (``size < len(labels)``), class proportions kept.

    Uses largest-remainder allocation in integer arithmetic, so the total is exact and the
    allocation is identical on every machine.
    """

    def quota(counts: Sequence[int]) -> list[int]:
        total = sum(counts)
        base = [size * c // total for c in counts]
        remainders = [size * c % total for c in counts]
        # Ties go to the lower class index, keeping the allocation deterministic.
        by_remainder = sorted(range(len(counts)), key=lambda i: (-remainders[i], i))
        for i in by_remainder[: size - sum(base)]:
            base[i] += 1
        return base

    _, picked = _stratified_pick(labels, quota, seed)
    return picked
