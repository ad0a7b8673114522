"""zoo:sst2-bilstm: trained (seeded) on first use and cached; the sst2 task scores its logits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimkit import zoo
from slimkit.core import DataError
from slimkit.zoo import bilstm
from slimkit.zoo.bilstm import BiLSTMClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_shapes_and_masked_pooling() -> None:
    torch.manual_seed(0)
    net = BiLSTMClassifier(vocab_size=50, embed_dim=8, hidden=12).eval()
    ids = torch.randint(1, 50, (2, 6))
    ones = torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        assert net(ids, ones).shape == (2, 2)
        torch.testing.assert_close(net(ids, ones), net(ids))  # an all-ones mask is no mask
        half = ones.clone()
        half[:, 3:] = 0
        assert not torch.allclose(net(ids, half), net(ids, ones))  # masked steps leave the pooling


def test_cache_key_follows_architecture_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    key = bilstm.cache_key()
    assert bilstm.cache_key(BiLSTMClassifier(hidden=128)) != key
    monkeypatch.setitem(bilstm.TRAIN_SETTINGS, "epochs", 2)
    assert bilstm.cache_key() != key


@pytest.mark.slow  # two tiny trainings, but tokenizer loads and the 60 k-row read add up
def test_trains_seeded_on_first_use_then_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         data_dir: Path) -> None:
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    monkeypatch.setitem(bilstm.TRAIN_SETTINGS, "train_sentences", 96)  # cheap: the mechanism is under test
    before = bilstm.TRAIN_COUNT
    a = zoo.load("zoo:sst2-bilstm")
    assert bilstm.TRAIN_COUNT == before + 1
    assert [f.name for f in tmp_path.glob("sst2-bilstm-*.safetensors")] == [bilstm.cache_file().name]
    again = zoo.load("zoo:sst2-bilstm")
    assert bilstm.TRAIN_COUNT == before + 1  # loaded, not retrained
    retrained = bilstm.train_bilstm(a.tokenizer)  # seeded before the model is built: identical weights
    for (k, x), y, z in zip(a.model.state_dict().items(), again.model.state_dict().values(),
                            retrained.state_dict().values()):
        assert torch.equal(x, y) and torch.equal(x, z), k
    assert a.default_task == "sst2" and a.family == "text"
    batch = a.example_inputs(1, 16)
    assert a.model(**batch).shape == (1, 2)
    m = zoo.get_task("sst2").evaluate(a, limit=64)
    assert m["n"] == 64 and 0.0 <= m["accuracy"] <= 1.0


def test_sst2_task_checks_the_output_and_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               data_dir: Path) -> None:
    from slimkit.zoo.minilm import TextTokenizer, minilm_path
    from slimkit.zoo.specs import ZooModel

    tok = TextTokenizer(minilm_path())
    torch.manual_seed(0)
    net = BiLSTMClassifier(vocab_size=tok.vocab_size, embed_dim=8, hidden=8).eval()
    zm = ZooModel(model=net, spec="zoo:sst2-bilstm", family="text", default_task="sst2", tokenizer=tok)
    task = zoo.get_task("sst2")
    out = task.evaluate(net, zm, reference=net, limit=40)
    assert out["agreement"] == 1.0 and out["n"] == 40
    batch = next(iter(task.train_batches(zm, 8)))
    loss = task.loss_fn(net, batch)
    assert loss.dim() == 0 and loss.item() > 0
    bad = ZooModel(model=torch.nn.Sequential(), spec="x", family="text", tokenizer=tok)

    class Vec(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return input_ids.float().sum(dim=1)  # [B]: not logits

    with pytest.raises(DataError, match="logits"):
        task.evaluate(Vec(), bad, limit=8)


@pytest.mark.slow
def test_pretrained_bilstm_accuracy(data_dir: Path) -> None:
    """The real zoo model (trained on first use, ~minutes, then cached) is a fair SST-2 classifier."""
    zm = zoo.load("zoo:sst2-bilstm")
    acc = zoo.get_task("sst2").evaluate(zm)["accuracy"]
    assert acc >= 0.75, acc  # 0.79 measured; random is 0.5
