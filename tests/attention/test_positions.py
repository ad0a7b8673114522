"""extend_positions grows a BERT's position table so it reads inputs longer than it was built for."""
from __future__ import annotations

import pytest
import torch
import transformers

from slimkit.attention.positions import extend_positions
from slimkit.core.errors import ModelSpecError


def _bert(max_pos: int = 16) -> transformers.BertModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=max_pos)
    return transformers.BertModel(cfg).eval()


def test_copy_extends_and_keeps_short_inputs_identical() -> None:
    model = _bert()
    ids = torch.randint(1, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    before = model(input_ids=ids).last_hidden_state
    old = model.embeddings.position_embeddings.weight.detach().clone()
    extend_positions(model, 40)
    assert model.config.max_position_embeddings == 40
    assert model.embeddings.position_ids.shape == (1, 40)
    assert model.embeddings.token_type_ids.shape == (1, 40)
    new = model.embeddings.position_embeddings.weight
    torch.testing.assert_close(new[16:32], old)   # the table repeats
    torch.testing.assert_close(new[35], old[3])
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, before)
    long_ids = torch.randint(1, 50, (1, 40), generator=torch.Generator().manual_seed(2))
    assert model(input_ids=long_ids).last_hidden_state.shape == (1, 40, 32)
    assert "position_ids" not in model.state_dict()  # buffers stay non-persistent


def test_interpolate_keeps_ends_and_is_monotone_between() -> None:
    model = _bert()
    old = model.embeddings.position_embeddings.weight.detach().clone()
    extend_positions(model, 31, mode="interpolate")
    new = model.embeddings.position_embeddings.weight.detach()
    torch.testing.assert_close(new[0], old[0])
    torch.testing.assert_close(new[-1], old[-1])
    torch.testing.assert_close(new[2], old[1])  # 31 rows over 16: row 2 lands on old row 1
    torch.testing.assert_close(new[1], (old[0] + old[1]) / 2)


def test_bad_requests_are_slimkit_errors() -> None:
    with pytest.raises(ModelSpecError, match="fewer"):
        extend_positions(_bert(), 8)
    with pytest.raises(ModelSpecError, match="mode"):
        extend_positions(_bert(), 32, mode="stretch")  # type: ignore[arg-type]
    with pytest.raises(ModelSpecError, match="position"):
        extend_positions(torch.nn.Linear(2, 2), 32)
