"""Five standard small CNNs as specs: what a user would train instead of running a search.

Each function returns an :class:`ArchSpec` for any input shape and class count; the figures in
the docstrings are for Fashion-MNIST (1x28x28, 10 classes) and come from the spec walk (a test
checks them). They are the baselines a study's front is compared with (``bench/baselines.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from ._spec import ArchSpec, ConvBlock, DenseLayer

__all__ = [
    "BASELINES",
    "gap_cnn",
    "lenet5",
    "mobilenet_small",
    "resnet8",
    "rules_cnn",
]

Shape = tuple[int, int, int]
FASHION_MNIST: Shape = (1, 28, 28)


def lenet5(input_shape: Shape = FASHION_MNIST, num_classes: int = 10) -> ArchSpec:
    """LeNet-5 (LeCun et al. 1998) as it is trained today: 6c5-pool-16c5-pool-120-84.

    ReLU and max pooling; the first 5x5 convolution is 'same'-padded, so a 28x28 image meets the
    second one at 14x14, as the original's 32x32 input did after its 'valid' first convolution.
    Fashion-MNIST: 61,706 parameters, 416,520 MACs per image.
    """
    return ArchSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        blocks=(
            ConvBlock(6, kernel=5, padding="same", pool="max"),
            ConvBlock(16, kernel=5, padding="valid", pool="max"),
        ),
        aggregation="flatten",
        dense=(DenseLayer(120), DenseLayer(84)),
    )


def gap_cnn(input_shape: Shape = FASHION_MNIST, num_classes: int = 10) -> ArchSpec:
    """A small all-convolutional network: 16-16-pool-32-32-pool-64-gap (3x3, BatchNorm, ReLU).

    Global average pooling feeds the classifier directly (seed 003's head without dense layers).
    Fashion-MNIST: 35,674 parameters, 5,532,544 MACs per image.
    """
    return ArchSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        blocks=(
            ConvBlock(16, convs=2, batch_norm=True, pool="max"),
            ConvBlock(32, convs=2, batch_norm=True, pool="max"),
            ConvBlock(64, batch_norm=True),
        ),
        aggregation="gap",
    )


def rules_cnn(input_shape: Shape = FASHION_MNIST, num_classes: int = 10) -> ArchSpec:
    """Seed 002's rules of thumb: 32-32-pool-64-64-pool-dense128, BatchNorm, dropout 0.4.

    3x3 'same' convolutions with BatchNorm and ReLU, filters doubling per stage, dropout 0.4 after
    each pooled stage and after the dense layer of 128.
    Fashion-MNIST: 468,010 parameters, 18,691,840 MACs per image.
    """
    return ArchSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        blocks=(
            ConvBlock(32, convs=2, batch_norm=True, pool="max", dropout=0.4),
            ConvBlock(64, convs=2, batch_norm=True, pool="max", dropout=0.4),
        ),
        aggregation="flatten",
        dense=(DenseLayer(128, dropout=0.4),),
    )


def mobilenet_small(input_shape: Shape = FASHION_MNIST, num_classes: int = 10) -> ArchSpec:
    """A MobileNet-style network (Howard et al. 2017): a 3x3 stem, then depthwise-separable
    blocks 32, 64/2, 128/2, 128 (each a depthwise 3x3 and a pointwise 1x1, BatchNorm and ReLU
    after both; /2 is a stride-2 depthwise conv), global average pooling.

    Fashion-MNIST: 31,946 parameters, 2,375,232 MACs per image.
    """
    sep = {"block_type": "separable", "batch_norm": True}
    return ArchSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        blocks=(
            ConvBlock(16, batch_norm=True),
            ConvBlock(32, **sep),
            ConvBlock(64, stride=2, **sep),
            ConvBlock(128, stride=2, **sep),
            ConvBlock(128, **sep),
        ),
        aggregation="gap",
    )


def resnet8(input_shape: Shape = FASHION_MNIST, num_classes: int = 10) -> ArchSpec:
    """A ResNet-8 (He et al. 2016, the CIFAR layout): a 3x3 stem of 16, three basic blocks of
    two 3x3 convolutions (16, 32/2, 64/2; /2 is a stride-2 first conv, its shortcut a stride-2
    1x1 projection with BatchNorm), BatchNorm and ReLU, global average pooling.

    Fashion-MNIST: 77,754 parameters, 9,345,920 MACs per image.
    """
    res = {"block_type": "residual", "convs": 2, "batch_norm": True}
    return ArchSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        blocks=(
            ConvBlock(16, batch_norm=True),
            ConvBlock(16, **res),
            ConvBlock(32, stride=2, **res),
            ConvBlock(64, stride=2, **res),
        ),
        aggregation="gap",
    )


# Name -> the function that builds it, in the order a benchmark lists them.
BASELINES: dict[str, Callable[[Shape, int], ArchSpec]] = {
    "lenet5": lenet5,
    "gap_cnn": gap_cnn,
    "rules_cnn": rules_cnn,
    "mobilenet_small": mobilenet_small,
    "resnet8": resnet8,
}
