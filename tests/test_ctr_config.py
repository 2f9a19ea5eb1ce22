"""ctr_eval.config: baseline values, the Task 1 lock, validation, hashing."""
from __future__ import annotations

import dataclasses
import re

import pytest

from ctr_eval.config import (
    TASK1_TUNABLE,
    config_hash,
    config_to_dict,
    parse_regularizer,
    resolve_config,
)
from ctr_eval.models.din import DINConfig
from ctr_eval.models.transact_dcn import TransActConfig


def test_din_defaults_are_the_challenge_baseline():
    cfg = resolve_config("din")
    assert isinstance(cfg, DINConfig)
    assert cfg.embedding_dim == 64 and cfg.max_len == 64 and cfg.num_levels == 11
    assert cfg.attention_hidden_units == (512, 256)
    assert cfg.attention_hidden_activations == "relu" and cfg.din_use_softmax is False
    assert cfg.attention_dropout == 0.1
    assert cfg.dnn_hidden_units == (1024, 512, 256) and cfg.batch_norm is True
    assert cfg.net_dropout == 0.1 and cfg.embedding_regularizer == 1e-6 and cfg.net_regularizer == 0.0
    assert cfg.learning_rate == 1e-3 and cfg.batch_size == 8192
    assert cfg.early_stop_patience == 3 and cfg.seed == 20242025
    assert cfg.max_gradient_norm == 10.0 and cfg.reduce_lr_on_plateau is True
    assert cfg.lr_decay_factor == 0.1 and cfg.min_lr == 1e-6 and cfg.embedding_init_std == 1e-4


def test_transact_defaults_are_the_published_model():
    cfg = resolve_config("transact_dcn")
    assert isinstance(cfg, TransActConfig)
    assert (cfg.transformer_layers, cfg.num_heads, cfg.dim_feedforward) == (2, 1, 256)
    assert cfg.transformer_dropout == 0.2 and cfg.net_dropout == 0.2
    assert cfg.first_k_cols == 16 and cfg.concat_max_pool is True and cfg.dcn_cross_layers == 3
    assert cfg.dcn_hidden_units == (1024, 512, 256) and cfg.mlp_hidden_units == (64, 32)
    assert cfg.learning_rate == 5e-4 and cfg.batch_size == 128 and cfg.embedding_dim == 64
    assert cfg.published_mask is False


def _changed_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.05
    if isinstance(value, tuple):
        return tuple(v + 1 for v in value)
    if value == "relu":
        return "dice"  # refused by the lock before its own validity matters
    return value + "x"


FIXED_DIN_FIELDS = [f.name for f in dataclasses.fields(DINConfig) if f.name not in TASK1_TUNABLE]


@pytest.mark.parametrize("name", FIXED_DIN_FIELDS)
def test_task1_refuses_every_fixed_key(name):
    value = _changed_value(getattr(DINConfig(), name))
    with pytest.raises(ValueError, match=rf"Task 1 mode fixes the DIN configuration: {name} may not change"):
        resolve_config("din", **{name: value})


@pytest.mark.parametrize("name", ["attention_hidden_units", "embedding_dim", "max_len", "seed", "epochs"])
def test_task1_lock_message_names_key_and_tunables(name):
    value = _changed_value(getattr(DINConfig(), name))
    with pytest.raises(ValueError, match=rf"{name} may not change; only batch_size, "
                                         r"embedding_regularizer, learning_rate, net_dropout, "
                                         r"net_regularizer may"):
        resolve_config("din", **{name: value})


def test_task1_accepts_the_five_tunables():
    cfg = resolve_config("din", embedding_regularizer=1e-7, net_regularizer="l2(1e-5)",
                         net_dropout=0.2, learning_rate=5e-4, batch_size=1024)
    assert (cfg.embedding_regularizer, cfg.net_regularizer) == (1e-7, "l2(1e-5)")
    assert (cfg.net_dropout, cfg.learning_rate, cfg.batch_size) == (0.2, 5e-4, 1024)
    assert TASK1_TUNABLE == {"embedding_regularizer", "net_regularizer", "net_dropout",
                             "learning_rate", "batch_size"}


def test_task1_accepts_a_fixed_key_at_its_default_value():
    assert resolve_config("din", embedding_dim=64, attention_hidden_units=[512, 256]) == DINConfig()


def test_free_mode_changes_architecture():
    cfg = resolve_config("din", task1=False, embedding_dim=8, attention_hidden_units=[16, 8])
    assert cfg.embedding_dim == 8 and cfg.attention_hidden_units == (16, 8)


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(ValueError, match=r"unknown din config key 'learning_rat'; did you mean 'learning_rate'\?"):
        resolve_config("din", learning_rat=1e-3)


def test_unknown_model_lists_known_models():
    from ctr_eval.models import list_models
    from ctr_eval.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"unknown model 'dinn'\. Did you mean 'din'\? "
                                               rf"Known models: {', '.join(list_models())}"):
        resolve_config("dinn")


def test_transact_is_not_a_task1_model():
    with pytest.raises(ValueError, match="Task 1 mode evaluates embeddings with the fixed DIN only"):
        resolve_config("transact_dcn", task1=True)
    assert resolve_config("transact_dcn", published_mask=True).published_mask is True


@pytest.mark.parametrize("key, value, exc, message", [
    ("batch_size", "big", TypeError, r"DINConfig.batch_size must be an integer, got 'big'"),
    ("batch_size", 0, ValueError, r"DINConfig.batch_size must be >= 1, got 0"),
    ("net_dropout", 1.5, ValueError, r"DINConfig.net_dropout must be in \[0, 1\), got 1.5"),
    ("learning_rate", 0.0, ValueError, r"DINConfig.learning_rate must be > 0"),
    ("learning_rate", float("nan"), ValueError, r"must be finite"),
    ("embedding_regularizer", "l3(1)", ValueError, r"regularizer 'l3\(1\)' not understood"),
    ("embedding_regularizer", -1.0, ValueError, r"regularizer must be a finite number >= 0"),
    ("net_regularizer", True, TypeError, r"regularizer must be a float"),
])
def test_bad_values_are_refused(key, value, exc, message):
    with pytest.raises(exc, match=message):
        resolve_config("din", **{key: value})


def test_bad_free_mode_values():
    with pytest.raises(ValueError, match=r"attention_hidden_units must be a non-empty list of positive integers"):
        resolve_config("din", task1=False, attention_hidden_units=[])
    with pytest.raises(ValueError, match=r"attention_hidden_activations='dice' is not supported; valid: \['relu'\]"):
        resolve_config("din", task1=False, attention_hidden_activations="dice")


def test_parse_regularizer_matches_fuxictr_forms():
    assert parse_regularizer(1e-6) == [(2, 1e-6)]
    assert parse_regularizer(0) == [] and parse_regularizer(None) == []
    assert parse_regularizer("1e-6") == [(2, 1e-6)]
    assert parse_regularizer("l1(0.5)") == [(1, 0.5)]
    assert parse_regularizer("l1_l2(1e-3, 1e-4)") == [(1, 1e-3), (2, 1e-4)]


def test_config_hash_is_stable_and_sensitive():
    base = config_hash(resolve_config("din"))
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert config_hash(resolve_config("din")) == base
    assert config_hash(resolve_config("din", learning_rate=1e-3, batch_size=8192.0)) == base
    assert config_hash(resolve_config("din", embedding_regularizer=0.000001)) == base
    others = {config_hash(resolve_config("din", **{k: v})) for k, v in [
        ("embedding_regularizer", 1e-7), ("net_regularizer", 1e-6), ("net_dropout", 0.2),
        ("learning_rate", 1e-4), ("batch_size", 4096)]}
    assert base not in others and len(others) == 5
    assert config_hash(resolve_config("transact_dcn")) != base


def test_config_to_dict_round_trips():
    cfg = resolve_config("transact_dcn", first_k_cols=4, mlp_hidden_units=(8,))
    as_dict = config_to_dict(cfg)
    assert as_dict["model"] == "transact_dcn" and as_dict["mlp_hidden_units"] == [8]
    rebuilt = resolve_config(as_dict.pop("model"), task1=False, **as_dict)
    assert rebuilt == cfg and config_hash(rebuilt) == config_hash(cfg)


def test_constraints_are_declared_on_the_fields_and_checked_for_any_config():
    # a new model's field gets its range from its declaration, not from its name
    import dataclasses

    from ctr_eval.config import TrainingConfig, _coerce, probability, setting

    @dataclasses.dataclass(frozen=True)
    class NewConfig(TrainingConfig):
        attn_dropout: float = probability(0.1)
        heads: int = setting(2, at_least=1)
        kernel: str = setting("ReLU", choices=("ReLU", "gelu"))
        warmup: int = setting(0, at_least=0)
        width: int = 8

    with pytest.raises(ValueError, match=r"NewConfig.attn_dropout must be in \[0, 1\), got 1.5"):
        _coerce(NewConfig, "attn_dropout", 1.5)
    assert _coerce(NewConfig, "warmup", 0) == 0
    with pytest.raises(ValueError, match=r"NewConfig.width must be >= 1, got 0"):
        _coerce(NewConfig, "width", 0)  # undeclared integers: >= 1
    assert _coerce(NewConfig, "kernel", "relu") == "ReLU"  # stored as declared
    with pytest.raises(ValueError, match=r"kernel='tanh' is not supported; valid: \['ReLU', 'gelu'\]"):
        _coerce(NewConfig, "kernel", "tanh")
    assert resolve_config("din", task1=False, monitor="auc").monitor == "AUC"


def test_declared_limits_leave_the_config_hash_alone():
    # the hash of the DIN config the demo recipes recorded before limits were declared
    assert config_hash(resolve_config("din", task1=False, batch_size=1024, seed=1)) == "d6328993e928fe64"
