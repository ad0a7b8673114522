"""Data-folder resolution, the TSV readers and the ImageNet sample (real files under SLIMKIT_DATA)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from slimkit import zoo
from slimkit.core.errors import DataError
from slimkit.zoo.data import center_crop, imagenet_sample, read_sst2, read_stsb


class _FakeText:
    family, spec, tokenizer = "text", "hf:fake", object()


def test_data_dir_missing_or_not_a_folder_raises_data_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SLIMKIT_DATA", raising=False)
    with pytest.raises(DataError, match="SLIMKIT_DATA"):
        zoo.data_dir()
    with pytest.raises(DataError, match="SLIMKIT_DATA"):  # a task reading data says the same
        zoo.get_task("stsb").calibration_batches(_FakeText(), 1, 1)
    monkeypatch.setenv("SLIMKIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="not a folder"):
        zoo.data_dir()
    monkeypatch.setenv("SLIMKIT_DATA", str(tmp_path))  # a folder, but without the files
    with pytest.raises(DataError, match="not found"):
        read_sst2("train")


@pytest.mark.data
def test_unknown_split_and_task_are_data_errors(data_dir: Path) -> None:
    with pytest.raises(DataError, match="train, dev, test"):
        read_sst2("validation")
    with pytest.raises(DataError, match="digits, stsb, sst2-probe, imagenet-sample"):
        zoo.get_task("mnist")
    assert zoo.tasks() == ["digits", "stsb", "sst2-probe", "imagenet-sample", "sst2"]


@pytest.mark.data
def test_readers_keep_quotes_and_row_counts(data_dir: Path) -> None:
    s1, s2, score = read_stsb("test")
    assert len(s1) == len(s2) == len(score) == 1500
    assert all(0.0 <= s <= 5.0 for s in score)
    assert any('"extreme".' in s for s in s2)  # QUOTE_NONE: quote marks are text, not field quoting
    sents, labels = read_sst2("test")
    assert len(sents) == 872 and set(labels) == {0, 1}
    assert sents[0] == "it 's a charming and often affecting journey ."


def test_center_crop_resizes_shorter_side_then_cuts_the_middle() -> None:
    img = Image.new("RGB", (512, 300), (0, 0, 0))  # landscape: shorter side 300 -> 256, width -> 437
    img.paste((255, 0, 0), (246, 140, 266, 160))  # a red square at the centre
    out = center_crop(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert out[0, 112, 112] > 200 and out[1, 112, 112] < 50  # centre stays red
    assert out[0, 0, 0] == 0 and out[0, 223, 223] == 0  # corners are black


@pytest.mark.data
def test_imagenet_sample_halves_by_label_and_cached(data_dir: Path) -> None:
    calib_x, calib_y = imagenet_sample("calib")
    eval_x, eval_y = imagenet_sample("eval")
    assert calib_x.shape == eval_x.shape == (500, 3, 224, 224) and calib_x.dtype == torch.uint8
    assert calib_y.tolist() == list(range(500)) and eval_y.tolist() == list(range(500, 1000))
    assert float(eval_x.float().std()) > 30  # real photos, not blank tensors
    assert any(p.name.startswith("imagenet-sample-") for p in zoo.cache_dir().iterdir())
