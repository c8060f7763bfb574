"""A trained network with its preprocessing: images in, class probabilities and labels out.

The normalisation a network was trained with lives in its ``metadata.json`` (timm keeps it in the
model's ``pretrained_cfg`` for the same reason); :class:`Predictor` reads it with the weights, so
no caller writes ``(x - mean) / std`` by hand and none can forget it. It takes uint8 or float
images (float ones in the same 0..255 units as uint8), ``(N, C, H, W)`` or single-channel
``(N, H, W)``, NumPy or torch, or PIL images, and resizes them to the network's input when asked.

:meth:`Predictor.graph` is the same computation as one ``nn.Module`` from uint8 images to
probabilities, written without data-dependent Python control flow so that ``torch.export``, the
ONNX exporter and TorchScript's tracer all capture all of it. An adaptive-depth network runs, per
image, only the stages up to its first confident exit; a graph cannot skip work per image, so the
graph runs every stage and selects each image's exit by the same confidence rule (a gather), which
gives the same probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnas.models import CNN, CnnasError, ModelFileError, load_model, read_metadata

from ._data import resize_images
from ._folder import to_8_bits

__all__ = ["ImageClassifier", "ImageInputError", "Prediction", "Predictor"]


class ImageInputError(CnnasError, ValueError):
    """Images a predictor cannot take: wrong rank, channels, size or type; the message says what
    the model takes."""


class Prediction(NamedTuple):
    """What :meth:`Predictor.predict` returns for a batch of N images."""

    # (N, classes) float32 class probabilities on the CPU; each row sums to 1.
    probabilities: torch.Tensor
    # (N,) int64: the most probable class of each image.
    indices: torch.Tensor
    # The class names of ``indices``.
    labels: list[str]


class ImageClassifier(nn.Module):
    """uint8 images ``(N, C, H, W)`` -> class probabilities ``(N, classes)``, in one module.

    Normalisation, the network and the softmax, with nothing that depends on the data in Python,
    so every exporter captures the whole computation (see the module docstring for adaptive
    depth). Always in eval mode.
    """

    def __init__(self, net: CNN, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        c = net.spec.input_shape[0]
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.adaptive = bool(net.spec.adaptive_depth)
        self.threshold = float(net.spec.exit_threshold)
        self.eval()

    def train(self, mode: bool = True) -> ImageClassifier:
        # A graph for inference only: dropout and BatchNorm's running statistics as in eval.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.float() - self.mean) / self.std
        if not self.adaptive:
            return self.net(z).float().softmax(1)
        # Every exit's probabilities at full depth: (exits, N, classes).
        probs = torch.stack([e.float().softmax(1) for e in self.net.forward_exits(z)])
        if self.threshold >= 1.0:  # CNN._confident: a threshold of 1 never stops early
            return probs[-1]
        confident = probs[:-1].amax(2) >= self.threshold
        # The last exit answers every image that no earlier exit is confident about.
        confident = torch.cat([confident, torch.ones_like(confident[:1])])
        # argmax returns the first maximum: the first confident exit, as in adaptive_forward.
        first = confident.to(torch.int32).argmax(0)
        index = first.view(1, -1, 1).expand(1, -1, probs.shape[2])
        return probs.gather(0, index).squeeze(0)


class Predictor:
    """A trained network with the normalisation it was trained with and its class names.

    ``model`` is a :class:`cnnas.models.CNN`; ``mean`` and ``std`` are per-channel, in 0..255
    units (``ImageData.mean``/``std``, ``metadata.json``'s ``mean``/``std``). Every prediction runs
    in eval mode without gradients, in batches of ``batch_size`` images.
    """

    def __init__(
        self,
        model: CNN,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] | None = None,
        *,
        batch_size: int = 1024,
    ) -> None:
        if not isinstance(model, CNN):
            raise TypeError(f"Predictor takes a cnnas.models.CNN, got {type(model).__name__}")
        spec = model.spec
        c = spec.input_shape[0]
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != c or len(std) != c:
            raise ValueError(
                f"mean and std need one value per channel ({c}), got {len(mean)} and {len(std)}"
            )
        if not all(s > 0 for s in std):
            raise ValueError(f"std must be > 0 in every channel, got {std}")
        names = [str(n) for n in classes] if classes else [str(i) for i in range(spec.num_classes)]
        if len(names) != spec.num_classes:
            raise ValueError(
                f"the model has {spec.num_classes} classes, but {len(names)} class names were given"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.mean, self.std = tuple(mean), tuple(std)
        self.classes = tuple(names)
        self.batch_size = batch_size
        device = self.device
        self._mean = torch.tensor(mean, device=device).view(1, c, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, c, 1, 1)

    @classmethod
    def from_dir(
        cls,
        directory: str | os.PathLike,
        *,
        verify: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> Predictor:
        """The predictor of a saved model (``save_model``, ``cnnas pull``): network, normalisation
        and class names from its files, checked against its manifest unless ``verify=False``.

        Raises ModelFileError when a file is missing or tampered with, or when ``metadata.json``
        does not record the normalisation.
        """
        model = load_model(directory, verify=verify, map_location=map_location)
        meta = read_metadata(directory)
        c = model.spec.input_shape[0]
        for key in ("mean", "std"):
            value = meta.get(key)
            if not isinstance(value, list) or len(value) != c:
                raise ModelFileError(
                    f"{os.fspath(directory)}/metadata.json: needs {key!r}, the normalisation the "
                    f"network was trained with, as a list of {c} number(s); got {value!r}. Build "
                    "Predictor(model, mean, std) yourself if you know them"
                )
        return cls(model, meta["mean"], meta["std"], meta.get("classes"))

    # --- what the model takes -----------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as the network takes it."""
        c, h, w = self.model.spec.input_shape
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return int(self.model.spec.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def images(self, images: Any, *, resize: bool = False) -> torch.Tensor:
        """``images`` as the float32 ``(N, C, H, W)`` batch (0..255 units) the network takes,
        not yet normalised.

        Takes a torch tensor or NumPy array, uint8 or float (float in 0..255 units), of shape
        ``(N, C, H, W)`` or, for a single-channel model, ``(N, H, W)``; or a PIL image or a list
        of them (converted to the model's channels). Images of another height and width are
        resized (bilinear, antialiased) when ``resize`` is true, and refused otherwise.

        Raises ImageInputError saying what the model takes.
        """
        if _is_pil(images) or (
            isinstance(images, (list, tuple)) and images and all(_is_pil(i) for i in images)
        ):
            return self._from_pil([images] if _is_pil(images) else list(images), resize)
        if isinstance(images, np.ndarray):
            if images.dtype == object or not (
                np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_
            ):
                raise ImageInputError(f"images must be numbers, got a {images.dtype} array")
            array = np.ascontiguousarray(images)
            # A read-only array (np.asarray of a PIL image is one) would make torch warn that
            # writing to it is undefined; nothing here writes, but a copy keeps the user's
            # output clean and costs little next to the network.
            x = torch.from_numpy(array if array.flags.writeable else array.copy())
        elif isinstance(images, torch.Tensor):
            x = images.detach()
        else:
            raise ImageInputError(
                "images must be a torch tensor, a NumPy array, a PIL image or a list of PIL "
                f"images; got {type(images).__name__}"
            )
        if x.dtype == torch.bool or x.is_complex():
            raise ImageInputError(f"images must be uint8 or float pixel values, got {x.dtype}")
        return self._shaped(x, resize)

    def _shaped(self, x: torch.Tensor, resize: bool) -> torch.Tensor:
        c, h, w = self.input_shape
        takes = f"(N, {c}, {h}, {w})" + (f" or (N, {h}, {w})" if c == 1 else "")
        if x.ndim == 3 and c == 1:
            x = x.unsqueeze(1)
        if x.ndim != 4:
            raise ImageInputError(
                f"images of shape {tuple(x.shape)}: the model takes a batch {takes}"
                + ("; a single image needs a batch dimension" if x.ndim in (2, 3) else "")
            )
        if x.shape[1] != c:
            hint = "; the channels look last: use x.permute(0, 3, 1, 2)" if x.shape[-1] == c else ""
            raise ImageInputError(
                f"images of shape {tuple(x.shape)} have {x.shape[1]} channel(s), the model "
                f"takes {takes}{hint}"
            )
        if tuple(x.shape[2:]) != (h, w):
            if not resize:
                raise ImageInputError(
                    f"images are {x.shape[2]}x{x.shape[3]}, the model takes {h}x{w}; ask for "
                    "resizing (resize=True)"
                )
            if x.dtype == torch.uint8:
                x = resize_images(x.cpu(), (h, w))
            else:
                x = F.interpolate(
                    x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
                )
        return x.to(self.device, torch.float32)

    def _from_pil(self, images: list[Any], resize: bool) -> torch.Tensor:
        from PIL import Image

        c, h, w = self.input_shape
        arrays = []
        for img in images:
            # 16-bit and float images scaled to 8 bits as the image-folder reader does (Pillow's
            # convert() alone clips them at 255).
            img = to_8_bits(img).convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                if not resize:
                    raise ImageInputError(
                        f"an image is {img.size[1]}x{img.size[0]}, the model takes {h}x{w}; "
                        "ask for resizing (resize=True)"
                    )
                # Pillow's bilinear filter, as the training data's image-folder reader uses.
                img = img.resize((w, h), Image.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
            arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
        return x.to(self.device, torch.float32)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel: what the network saw in training."""
        return (x.to(self.device, torch.float32) - self._mean) / self._std

    # --- predictions --------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, images: Any, *, resize: bool = False) -> torch.Tensor:
        """The network's output: ``(N, classes)`` float32 logits on the CPU.

        Every network's output means the same thing: its softmax is the class probabilities (for
        a multi-head network predicting the heads' mean, the output is the log of that mean).
        """
        self.model.eval()
        out = [self.model(self.normalise(x)).float().cpu() for x in self._batches(images, resize)]
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    def _batches(self, images: Any, resize: bool) -> Iterator[torch.Tensor]:
        """``images`` as float batches: a large uint8 tensor is converted a batch at a time, so
        its float copy never exists whole."""
        if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
            for i in range(0, len(images), self.batch_size):
                yield self.images(images[i : i + self.batch_size], resize=resize)
            if len(images) == 0:
                self.images(images, resize=resize)  # still checked: shape, channels, size
            return
        x = self.images(images, resize=resize)
        for i in range(0, len(x), self.batch_size):
            yield x[i : i + self.batch_size]

    def predict_proba(self, images: Any, *, resize: bool = False) -> torch.Tensor:
        """``(N, classes)`` float32 class probabilities on the CPU; each row sums to 1."""
        return self.logits(images, resize=resize).softmax(1)

    def predict(self, images: Any, *, resize: bool = False) -> Prediction:
        """Probabilities, the most probable class's index and its name, per image."""
        probs = self.predict_proba(images, resize=resize)
        indices = probs.argmax(1) if len(probs) else torch.zeros(0, dtype=torch.long)
        return Prediction(probs, indices, [self.classes[int(k)] for k in indices])

    @torch.no_grad()
    def evaluate(self, x: Any, y: torch.Tensor) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on images ``x`` with int64 labels ``y``."""
        logits = self.logits(x)
        y = torch.as_tensor(y, dtype=torch.long).cpu()
        if not len(y):
            return 0.0, 0.0
        loss = float(F.cross_entropy(logits, y, reduction="sum")) / len(y)
        return loss, int((logits.argmax(1) == y).sum()) / len(y)

    def confusion_matrix(self, x: Any, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Accuracy and the ``(classes, classes)`` confusion matrix (rows: true class, columns:
        predicted) on images ``x`` with int64 labels ``y``."""
        k = self.num_classes
        y = torch.as_tensor(y, dtype=torch.long).cpu()
        pred = self.logits(x).argmax(1)
        matrix = torch.zeros(k, k, dtype=torch.long)
        matrix.index_put_((y, pred), torch.ones_like(pred), accumulate=True)
        return float(matrix.diag().sum()) / max(len(y), 1), matrix

    def graph(self) -> ImageClassifier:
        """The predictor as one module, uint8 images -> probabilities, on the CPU, for export.

        Its own copy of the network, so exporting never moves or changes this predictor's.
        """
        import copy

        net = copy.deepcopy(self.model).cpu().eval()
        return ImageClassifier(net, self.mean, self.std)


def _is_pil(obj: Any) -> bool:
    # No PIL import just to ask: a caller with only tensors never pays for it.
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")
