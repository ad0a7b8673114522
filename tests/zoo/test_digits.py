"""zoo:digits-cnn trains deterministically to high accuracy, caches its weights, and drives the digits task."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimkit import zoo
from slimkit.zoo import digits


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train once into an empty cache, so the test sees both the training and the reuse."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("SLIMKIT_CACHE", str(path))
    yield path
    mp.undo()


def test_trains_to_high_accuracy_and_reuses_the_cache(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMKIT_CACHE", str(fresh_cache))
    before = digits.TRAIN_COUNT
    zm = zoo.load("zoo:digits-cnn")
    assert digits.TRAIN_COUNT == before + 1
    files = list(fresh_cache.glob("digits-cnn-*.safetensors"))
    assert [f.name for f in files] == [f"digits-cnn-{digits.cache_key()}.safetensors"]
    assert not list(fresh_cache.glob(".digits-cnn*"))  # no temporary left behind
    metrics = zoo.get_task("digits").evaluate(zm)
    assert metrics["accuracy"] >= 0.95 and metrics["n"] == 450
    again = zoo.load("zoo:digits-cnn")
    assert digits.TRAIN_COUNT == before + 1  # loaded, not retrained
    for (k, a), (_, b) in zip(zm.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_torn_cache_file_is_retrained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    monkeypatch.setitem(digits.TRAIN_SETTINGS, "epochs", 1)  # cheap: only the recovery is under test
    digits.cache_file().write_bytes(b"not safetensors")
    before = digits.TRAIN_COUNT
    zm = zoo.load("zoo:digits-cnn")
    assert digits.TRAIN_COUNT == before + 1
    state = load_file(str(digits.cache_file()))  # overwritten with readable weights
    assert torch.equal(state["classifier.2.weight"], zm.model.classifier[2].weight)


def test_cache_key_tracks_architecture_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    base = digits.cache_key()
    assert digits.cache_key(digits.DigitsCNN(widths=(8, 32, 64))) != base
    monkeypatch.setitem(digits.TRAIN_SETTINGS, "epochs", 13)
    assert digits.cache_key() != base


def test_split_is_fixed_and_stratified() -> None:
    x_tr, _, x_te, y_te = digits.digits_split()
    assert x_tr.shape == (1347, 1, 8, 8) and x_te.shape == (450, 1, 8, 8)
    assert 0.0 <= float(x_tr.min()) and float(x_tr.max()) <= 1.0
    assert torch.bincount(y_te).min() >= 43  # every class ~45 times
    assert torch.equal(digits.digits_split()[3], y_te)


def test_digits_task_batches_loss_and_agreement() -> None:
    zm = zoo.load("zoo:digits-cnn")
    task = zoo.get_task("digits")
    calib = task.calibration_batches(zm, 3, 16)
    assert [b.shape for b in calib] == [(16, 1, 8, 8)] * 3
    train = task.train_batches(zm, 100, epochs=2, seed=0)
    batches = list(train)
    assert len(batches) == len(train) == 2 * 14
    assert torch.equal(batches[0][1], next(iter(train))[1])  # re-iterable, same order
    assert sum(len(y) for _, y in batches[:14]) == 1347  # one epoch covers the split once
    loss = task.loss_fn(zm.model, batches[0])
    assert loss.ndim == 0 and 0.0 <= loss.item() < 0.5  # trained model: low loss on its own data
    m = task.evaluate(zm.model, zm, reference=zm.model, limit=100)
    assert m["n"] == 100 and m["agreement"] == 1.0
    noisy = zoo.build("zoo:digits-cnn")
    with torch.no_grad():
        noisy.classifier[2].weight.mul_(-1)  # flip the last layer: predictions change
    m2 = task.evaluate(noisy, zm, reference=zm.model, limit=100)
    assert m2["agreement"] < 0.5 and m2["accuracy"] < m["accuracy"]
    assert not zm.model.training  # evaluation restores the mode it found


def test_training_does_not_depend_on_the_callers_random_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference model is built under the training seed: two processes (here: two RNG
    states) train identical weights, so accuracy bars measured on it hold everywhere."""
    monkeypatch.setitem(digits.TRAIN_SETTINGS, "epochs", 1)  # cheap: only the determinism is under test
    torch.manual_seed(123)
    a = digits.train_digits_cnn()
    torch.manual_seed(456)
    b = digits.train_digits_cnn()
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_dev_split_is_fixed_and_never_the_test_split() -> None:
    from slimkit.core import DataError
    from slimkit.zoo.image_tasks import DEV_SIZE

    zm = zoo.load("zoo:digits-cnn")
    task = zoo.get_task("digits")
    dev = task.evaluate(zm.model, zm, split="dev")
    assert dev["n"] == DEV_SIZE and task.evaluate(zm.model, zm, split="dev") == dev
    assert task.evaluate(zm.model, zm)["n"] == 450  # the default stays the test split
    with pytest.raises(DataError, match="validation"):
        task.evaluate(zm.model, zm, split="validation")
