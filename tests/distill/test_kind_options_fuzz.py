"""Property: any ``with:`` mapping for the new distillation kinds builds a config or raises a
slimkit error (never a raw Python exception)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimkit.core import MethodConfig, SlimkitError, config_class

KINDS = ("distill.intermediate", "distill.multi_teacher", "distill.assistant_chain", "distill.mutual",
         "distill.born_again")
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 8), st.floats(allow_nan=True), st.text(max_size=6),
                     st.sampled_from(["context", "self", "zoo:minilm-l6", "hidden", "fsp", "last_k", "kd"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["what", "weight", "loss", "p", "heads", "relation_heads", "x"]), inner, max_size=3),
    max_leaves=8)
_keys = st.sampled_from(["matches", "layer_map", "k", "pairs", "teacher_layers", "logits", "teachers", "weights",
                         "average", "assistants", "assistant_steps", "peers", "generations", "loss", "alpha",
                         "steps", "freeze", "nope"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KINDS), st.dictionaries(_keys, _values, max_size=4))
def test_random_options_build_or_raise_library_error(kind: str, options: dict[str, object]) -> None:
    try:
        config = config_class(kind).from_dict(options)
    except SlimkitError:
        return
    assert isinstance(config, MethodConfig)
