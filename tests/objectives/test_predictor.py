"""The predictor: a trained network with its preprocessing, images in, probabilities out.

Real digits images and small networks trained on them for a second; the oracle is the test's own
``(x - mean) / std`` and softmax (or the training helpers of ``objectives``), never the
predictor's code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnas.models import CnnasError, ModelFileError, save_model
from cnnas.objectives import (
    ImageInputError,
    Predictor,
    confusion_matrix,
    evaluate,
    resize_images,
)
from tests.objectives._nets import (
    ADAPTIVE,
    MULTI_HEAD,
    STATIC,
    exits_at_every_depth,
    normalised,
    trained,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def static(digits):
    return trained(STATIC, digits)


@pytest.fixture(scope="module")
def predictor(static, digits) -> Predictor:
    return Predictor(static, digits.mean, digits.std, digits.classes)


def expected_probs(net, x, data) -> torch.Tensor:
    with torch.no_grad():
        return net(normalised(x, data)).softmax(1)


# --- input forms ----------------------------------------------------------------------------------


def test_every_input_form_gives_the_same_probabilities(predictor, static, digits) -> None:
    x = digits.test_x[:20]
    want = expected_probs(static, x, digits)
    arr = x.numpy()
    forms = {
        "uint8 tensor": x,
        "uint8 array": arr,
        "float32 tensor": x.float(),
        "float64 array": arr.astype(np.float64),
        "(N, H, W) tensor": x[:, 0],
        "(N, H, W) array": arr[:, 0],
        "PIL images": [Image.fromarray(a[0]) for a in arr],
        "RGB PIL images": [Image.fromarray(a[0]).convert("RGB") for a in arr],
    }
    for name, images in forms.items():
        got = predictor.predict_proba(images)
        assert got.dtype == torch.float32 and got.shape == (20, 10), name
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)
    one = predictor.predict_proba(Image.fromarray(arr[3, 0]))
    torch.testing.assert_close(one, want[3:4], rtol=0, atol=1e-6)


def test_a_read_only_array_is_taken_without_a_warning() -> None:
    """np.asarray of a PIL image is read-only; torch warns once a process about such arrays,
    so the check runs in a fresh interpreter, where the first warning would show."""
    import subprocess
    import sys

    script = """
import warnings
import numpy as np, torch
from PIL import Image
from cnnas.models import ArchSpec, ConvBlock, build
from cnnas.objectives import Predictor
net = build(ArchSpec((1, 8, 8), 10, (ConvBlock(4),), "gap")).eval()
p = Predictor(net, [8.0], [4.0], [str(k) for k in range(10)])
image = np.asarray(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)))
assert not image.flags.writeable
with warnings.catch_warnings():
    warnings.simplefilter("error")
    probs = p.predict_proba(image[None, None])
assert probs.shape == (1, 10)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not writable" not in done.stderr


def test_predict_gives_probabilities_indices_and_class_names(predictor, static, digits) -> None:
    x = digits.test_x[:50]
    result = predictor.predict(x)
    torch.testing.assert_close(result.probabilities.sum(1), torch.ones(50))
    want = expected_probs(static, x, digits).argmax(1)
    assert torch.equal(result.indices, want)
    assert result.labels == [digits.classes[int(k)] for k in want]
    # Most of them right: a trained network, not a random one (the test would pass vacuously).
    assert (result.indices == digits.test_y[:50]).float().mean() > 0.5


def test_batches_of_any_size_give_the_same_answer(static, digits) -> None:
    x = digits.test_x
    whole = Predictor(static, digits.mean, digits.std, batch_size=4096).predict_proba(x)
    small = Predictor(static, digits.mean, digits.std, batch_size=7).predict_proba(x)
    torch.testing.assert_close(small, whole, rtol=0, atol=1e-6)
    empty = Predictor(static, digits.mean, digits.std).predict(x[:0])
    assert empty.probabilities.shape == (0, 10) and empty.labels == []


def test_resizing_happens_only_when_asked(predictor, static, digits) -> None:
    big = torch.nn.functional.interpolate(digits.test_x[:6].float(), size=(16, 12)).round()
    big = big.to(torch.uint8)
    with pytest.raises(ImageInputError, match=r"16x12, the model takes 8x8.*resize=True"):
        predictor.predict_proba(big)
    got = predictor.predict_proba(big, resize=True)
    torch.testing.assert_close(
        got, expected_probs(static, resize_images(big, (8, 8)), digits), rtol=0, atol=1e-6
    )
    pil = [Image.fromarray(a[0]) for a in big.numpy()]
    with pytest.raises(ImageInputError, match="resize=True"):
        predictor.predict_proba(pil)
    by_pil = np.stack([np.asarray(i.resize((8, 8), Image.BILINEAR))[None] for i in pil])
    torch.testing.assert_close(
        predictor.predict_proba(pil, resize=True),
        expected_probs(static, torch.from_numpy(by_pil), digits),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 3, 8, 8), r"3 channel\(s\), the model takes \(N, 1, 8, 8\)"),
        (torch.zeros(2, 8, 8, 1), r"channels look last: use x\.permute"),
        (torch.zeros(8, 8, 8, 8), r"8 channel\(s\)"),
        (torch.zeros(8), r"shape \(8,\): the model takes a batch"),
        (torch.zeros(2, 1, 1, 8, 8), "the model takes a batch"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.bool), "uint8 or float pixel values"),
        (np.array([["a"]]), "must be numbers"),
        ("image.png", "got str"),
    ],
)
def test_bad_input_is_refused_saying_what_the_model_takes(predictor, images, match) -> None:
    with pytest.raises(ImageInputError, match=match) as err:
        predictor.predict_proba(images)
    assert isinstance(err.value, CnnasError)  # the CLI turns it into exit status 2


def test_a_predictor_needs_matching_normalisation_and_classes(static) -> None:
    with pytest.raises(ValueError, match="one value per channel"):
        Predictor(static, [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="std must be > 0"):
        Predictor(static, [0.0], [0.0])
    with pytest.raises(ValueError, match="10 classes, but 2 class names"):
        Predictor(static, [0.0], [1.0], ["a", "b"])
    with pytest.raises(TypeError, match=r"models\.CNN"):
        Predictor(torch.nn.Linear(2, 2), [0.0], [1.0])
    assert Predictor(static, [0.0], [1.0]).classes == tuple(str(i) for i in range(10))


# --- what the network's output means --------------------------------------------------------------


def test_a_multi_head_network_predicting_the_mean_returns_logits(digits) -> None:
    net = trained(MULTI_HEAD, digits)
    x = normalised(digits.test_x[:40], digits)
    with torch.no_grad():
        heads = net.forward_heads(x)
        mean = torch.stack([h.softmax(1) for h in heads]).mean(0)
        out = net(x)
    assert len(heads) == 3
    # Logits like every other network's output: their softmax is the prediction.
    torch.testing.assert_close(out.softmax(1), mean, rtol=0, atol=1e-6)
    got = Predictor(net, digits.mean, digits.std).predict_proba(digits.test_x[:40])
    torch.testing.assert_close(got, mean, rtol=0, atol=1e-6)


def test_adaptive_depth_predictions_and_the_graph_agree_at_every_depth(digits) -> None:
    x = normalised(digits.test_x, digits)
    net = exits_at_every_depth(trained(ADAPTIVE, digits), x)
    with torch.no_grad():
        logits, depths = net.adaptive_forward(x)
    assert set(depths.tolist()) == {1, 2, 3}, "the images must stop at every depth"
    predictor = Predictor(net, digits.mean, digits.std)
    got = predictor.predict_proba(digits.test_x)
    torch.testing.assert_close(got, logits.softmax(1), rtol=0, atol=1e-6)
    with torch.no_grad():
        graph = predictor.graph()(digits.test_x)
    torch.testing.assert_close(graph, got, rtol=0, atol=1e-6)
    assert torch.equal(graph.argmax(1), got.argmax(1))
    # The graph is a copy: running or moving it leaves the predictor's network alone.
    assert predictor.graph().net is not predictor.model


@pytest.mark.parametrize("spec", [STATIC, MULTI_HEAD], ids=["static", "multi-head"])
def test_the_graph_takes_uint8_images_and_matches_the_predictor(spec, digits) -> None:
    net = trained(spec, digits, steps=20)
    predictor = Predictor(net, digits.mean, digits.std)
    graph = predictor.graph()
    graph.train()  # an inference graph stays in eval mode
    assert not graph.training and not graph.net.training
    with torch.no_grad():
        got = graph(digits.test_x[:64])
    torch.testing.assert_close(got, predictor.predict_proba(digits.test_x[:64]), rtol=0, atol=1e-6)


def test_evaluate_and_confusion_matrix_agree_with_the_training_helpers(
    predictor, static, digits
) -> None:
    x, y = digits.test_x, digits.test_y
    loss, acc = predictor.evaluate(x, y)
    want_loss, want_acc = evaluate(static, x, y, digits.mean, digits.std)
    assert acc == want_acc and loss == pytest.approx(want_loss, abs=1e-6)
    acc2, matrix = predictor.confusion_matrix(x, y)
    want_acc2, want_matrix = confusion_matrix(static, x, y, digits.mean, digits.std, 10)
    assert acc2 == want_acc2 == acc
    assert torch.equal(matrix, want_matrix) and int(matrix.sum()) == len(y)


# --- from a saved model ---------------------------------------------------------------------------


def test_from_dir_reads_the_normalisation_and_class_names(static, digits, tmp_path) -> None:
    classes = [f"digit {c}" for c in digits.classes]
    save_model(
        static,
        tmp_path,
        extra={"mean": list(digits.mean), "std": list(digits.std), "classes": classes},
    )
    loaded = Predictor.from_dir(tmp_path)
    assert loaded.classes == tuple(classes)
    assert loaded.mean == tuple(digits.mean) and loaded.std == tuple(digits.std)
    x = digits.test_x[:30]
    torch.testing.assert_close(
        loaded.predict_proba(x), expected_probs(static, x, digits), rtol=0, atol=1e-6
    )
    assert loaded.predict(x).labels[0].startswith("digit ")


def test_from_dir_refuses_edited_or_missing_normalisation(static, digits, tmp_path) -> None:
    save_model(static, tmp_path / "a", extra={"mean": list(digits.mean), "std": list(digits.std)})
    meta_file = tmp_path / "a" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["mean"] = [0.0]
    meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ModelFileError, match=r"metadata\.json: sha256 .* refusing to load"):
        Predictor.from_dir(tmp_path / "a")
    unchecked = Predictor.from_dir(tmp_path / "a", verify=False)
    assert unchecked.mean == (0.0,)

    save_model(static, tmp_path / "b")  # no normalisation recorded
    with pytest.raises(ModelFileError, match=r"needs 'mean'.*Predictor\(model, mean, std\)"):
        Predictor.from_dir(tmp_path / "b")
