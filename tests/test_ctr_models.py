"""ctr_eval.models: registry, DIN and TransAct+DCNv2 shapes, masking, init, loss, learning."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctr_eval.config import resolve_config
from ctr_eval.data import ItemTable
from ctr_eval.metrics import auc
from ctr_eval.models import MODELS, build_model, ctr_loss, list_models

N_ITEMS = 60


pytestmark = pytest.mark.usefixtures("one_thread")


def make_table(seed: int = 0, n_items: int = N_ITEMS, emb: torch.Tensor | None = None) -> ItemTable:
    gen = torch.Generator().manual_seed(seed)
    tags = torch.randint(1, 30, (n_items + 1, 5), generator=gen)
    tags[:, 2:] = 0
    tags[0] = 0
    if emb is None:
        emb = torch.randn(n_items + 1, 128, generator=gen)
    emb = emb.clone()
    emb[0] = 0
    return ItemTable(tags=tags, emb=emb, source="test")


def make_batch(seed: int = 0, batch: int = 16, length: int = 10, n_items: int = N_ITEMS) -> dict:
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items + 1, (batch, length), generator=gen)
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    lengths[0], lengths[1] = 0, length  # an empty and a full history
    seq[torch.arange(length)[None, :] < (length - lengths)[:, None]] = 0
    return {
        "item_id": torch.randint(1, n_items + 1, (batch,), generator=gen),
        "likes_level": torch.randint(0, 11, (batch,), generator=gen),
        "views_level": torch.randint(0, 11, (batch,), generator=gen),
        "item_seq": seq,
        "label": torch.randint(0, 2, (batch,), generator=gen).float(),
    }


def tiny_model(name: str, table=None, seed=0, **overrides):
    """Registered model ``name`` built from its ``tiny_config`` (Task 2 mode)."""
    tiny = MODELS.get(name).tiny_config
    if tiny is None:
        pytest.fail(f"model {name!r} has no tiny_config: set a class attribute tiny_config = "
                    "{...} of config overrides that make it small (see docs/plugins.md)")
    torch.manual_seed(seed)
    cfg = resolve_config(name, task1=False, **{**tiny, **overrides})
    return build_model(name, cfg, table or make_table())


def small_din(table=None, seed=0, **overrides):
    return tiny_model("din", table, seed, **overrides)


def small_transact(table=None, seed=0, **overrides):
    return tiny_model("transact_dcn", table, seed, **overrides)


# ---------------------------------------------------------------- registry


def test_registry_lists_and_refuses():
    assert {"din", "transact_dcn"} <= set(list_models()) and list_models() == sorted(list_models())
    with pytest.raises(ValueError, match=r"unknown model 'transact'\. Did you mean 'transact_dcn'\? "
                                         rf"Known models: {', '.join(list_models())}"):
        build_model("transact", None, make_table())
    with pytest.raises(TypeError, match=r"model 'din' needs a DINConfig, got TransActConfig"):
        build_model("din", resolve_config("transact_dcn"), make_table())
    with pytest.raises(TypeError, match=r"item_table must be an ItemTable"):
        build_model("din", None, np.zeros((3, 128)))


def test_every_model_declares_a_tiny_config():
    missing = [n for n in list_models() if MODELS.get(n).tiny_config is None]
    assert not missing, f"models {missing} lack tiny_config (config overrides that make them small)"


@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_finite_logits_and_learns_a_step(name):
    model = tiny_model(name)
    batch = make_batch()
    model.train()
    logits = model(batch)
    assert logits.shape == (16,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    loss = model.loss(logits, batch["label"]) + model.regularization_loss()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    probs = model.predict(batch)
    assert torch.all((probs > 0) & (probs < 1))
    torch.testing.assert_close(probs, torch.sigmoid(model(batch)))


# ---------------------------------------------------------------- DIN


def test_full_size_din_has_the_baseline_shapes():
    model = build_model("din", resolve_config("din"), make_table())
    assert model.items.output_dim == 256
    assert model.attention.first_layer.in_features == 1024
    assert [m.out_features for m in model.attention.mlp.layers if isinstance(m, torch.nn.Linear)] == [512, 256, 1]
    dnn_linears = [m for m in model.dnn.layers if isinstance(m, torch.nn.Linear)]
    assert dnn_linears[0].in_features == 640
    assert [m.out_features for m in dnn_linears] == [1024, 512, 256, 1]
    assert model.items.emb_projection.weight.shape == (128, 128) and model.items.emb_projection.bias is None
    # FuxiCTR init: embeddings N(0, 1e-4) with a zero padding row; linear biases zero
    weight = model.items.id_embedding.weight
    assert torch.all(weight[0] == 0) and 0.5e-4 < weight[1:].std().item() < 2e-4
    assert torch.all(model.likes_embedding.weight[0] == 0)
    assert torch.all(dnn_linears[0].bias == 0)
    with torch.no_grad():
        out = model.eval()(make_batch())
    assert out.shape == (16,)


@pytest.mark.parametrize("softmax", [False, True])
def test_din_exact_equals_plain_forward_and_backward(softmax):
    model = small_din(din_use_softmax=softmax).double().eval()
    batch = make_batch(1)
    results = []
    for impl in ("exact", "plain"):
        model.attention_impl = impl
        model.zero_grad()
        out = model(batch)
        (out * torch.arange(1, 17, dtype=out.dtype)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)
    for g_exact, g_plain in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g_exact, g_plain, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", list_models())
def test_padding_item_content_never_changes_the_output(name):
    model = tiny_model(name).eval()
    batch = make_batch(2)
    before = model(batch)
    with torch.no_grad():  # randomise everything the padding id 0 could read
        model.items.id_embedding.weight[0].normal_()
        model.items.item_tags[0] = torch.tensor([1, 2, 3, 4, 5])
        model.items.item_emb[0].normal_()
    after = model(batch)
    if name == "din":
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    else:
        # padded keys are masked and their outputs dropped; only a row with no history at
        # all reads the padding item (it attends to its last padding position, documented)
        has_history = batch["item_seq"].ne(0).any(1)
        assert not bool(has_history[0])
        torch.testing.assert_close(before[has_history], after[has_history], rtol=1e-5, atol=1e-6)


def test_din_history_matters_and_only_real_positions_count():
    model = small_din().eval()
    batch = make_batch(3)
    base = model(batch)
    changed = dict(batch, item_seq=batch["item_seq"].clone())
    row = 1  # full history
    changed["item_seq"][row, -1] = changed["item_seq"][row, -1] % N_ITEMS + 1
    out = model(changed)
    assert not torch.isclose(out[row], base[row])
    torch.testing.assert_close(out[torch.arange(16) != row], base[torch.arange(16) != row])


def test_din_is_deterministic_for_a_seed():
    batch = make_batch(4)
    a = small_din(seed=7).eval()(batch)
    b = small_din(seed=7).eval()(batch)
    c = small_din(seed=8).eval()(batch)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_regularization_loss_is_fuxictr_form():
    model = small_din(embedding_regularizer=1e-3, net_regularizer="l1(1e-4)")
    emb_params = model.embedding_parameters()
    emb_ids = {id(p) for p in emb_params}
    expected = 1e-3 / 2 * sum(p.pow(2).sum() for p in emb_params)
    expected = expected + 1e-4 * sum(p.abs().sum() for p in model.parameters() if id(p) not in emb_ids)
    torch.testing.assert_close(model.regularization_loss(), expected)
    assert len(emb_params) == 5  # id, tags, projection, likes, views
    assert small_din(embedding_regularizer=0.0).regularization_loss().item() == 0.0


def test_ctr_loss_is_bce_on_sigmoid_with_fuxictr_saturation():
    logits = torch.tensor([-3.0, 0.5, 40.0])
    labels = torch.tensor([0.0, 1.0, 0.0])
    expected = F.binary_cross_entropy(torch.sigmoid(logits), labels)
    torch.testing.assert_close(ctr_loss(logits, labels), expected)
    # sigmoid(40) == 1 in float32: log(0) is clamped to -100 as in FuxiCTR's BCE
    assert ctr_loss(logits[2:], labels[2:]).item() == pytest.approx(100.0)


# ---------------------------------------------------------------- TransAct+DCNv2


def test_full_size_transact_has_the_published_widths():
    model = build_model("transact_dcn", resolve_config("transact_dcn"), make_table())
    assert model.encoder.layers[0].self_attn.embed_dim == 512
    assert model.encoder.layers[0].linear1.out_features == 256 and len(model.encoder.layers) == 2
    dcn_in = 64 + 64 + 256 + 17 * 512
    assert model.crossnet.cross_layers[0].in_features == dcn_in and len(model.crossnet.cross_layers) == 3
    head_linears = [m for m in model.head.layers if isinstance(m, torch.nn.Linear)]
    assert head_linears[0].in_features == dcn_in + 256
    assert [m.out_features for m in head_linears] == [64, 32, 1]


def test_transact_correct_mask_uses_the_real_history():
    model = small_transact().eval()
    batch = make_batch(5)
    base = model(batch)
    changed = dict(batch, item_seq=batch["item_seq"].clone())
    real = changed["item_seq"] != 0
    changed["item_seq"][real] = changed["item_seq"][real] % N_ITEMS + 1
    out = model(changed)
    moved = real.any(1)
    assert not torch.allclose(out[moved], base[moved])
    torch.testing.assert_close(out[~moved], base[~moved])
    assert torch.isfinite(base).all()  # includes the row with no history


def test_transact_published_mask_ignores_history_of_rows_with_padding():
    model = small_transact(published_mask=True).eval()
    batch = make_batch(6)
    seq = batch["item_seq"]
    base = model(batch)
    # change every real item except the most recent one
    changed = seq.clone()
    older = (seq != 0) & (torch.arange(seq.shape[1]) < seq.shape[1] - 1)
    changed[older] = changed[older] % N_ITEMS + 1
    out = model(dict(batch, item_seq=changed))
    torch.testing.assert_close(out, base, rtol=1e-5, atol=1e-6)
    # the most recent item matters only for rows without padding (full history)
    last_changed = seq.clone()
    last_changed[:, -1] = torch.where(seq[:, -1] != 0, seq[:, -1] % N_ITEMS + 1, seq[:, -1])
    out = model(dict(batch, item_seq=last_changed))
    full = (seq != 0).all(1)
    assert not torch.allclose(out[full], base[full])
    torch.testing.assert_close(out[~full], base[~full], rtol=1e-5, atol=1e-6)


def test_transact_with_history_shorter_than_k():
    model = small_transact(first_k_cols=16).eval()
    out = model(make_batch(7, length=5))
    assert out.shape == (16,) and torch.isfinite(out).all()


# ---------------------------------------------------------------- learning


def _synthetic_clicks(cluster: torch.Tensor, n_rows: int, length: int, seed: int) -> dict:
    """Each user mostly clicks one topic; a click is a target from the user's topic."""
    gen = torch.Generator().manual_seed(seed)
    n_topics = int(cluster.max()) + 1
    by_topic = [torch.nonzero(cluster == t).flatten() for t in range(n_topics)]
    topic = torch.randint(0, n_topics, (n_rows,), generator=gen)
    seq = torch.empty(n_rows, length, dtype=torch.long)
    for t in range(n_topics):
        rows = torch.nonzero(topic == t).flatten()
        pool = by_topic[t]
        seq[rows] = pool[torch.randint(0, len(pool), (len(rows), length), generator=gen)]
    label = torch.randint(0, 2, (n_rows,), generator=gen).float()
    target_topic = torch.where(label == 1, topic, (topic + torch.randint(1, n_topics, (n_rows,), generator=gen))
                               % n_topics)
    target = torch.empty(n_rows, dtype=torch.long)
    for t in range(n_topics):
        rows = torch.nonzero(target_topic == t).flatten()
        pool = by_topic[t]
        target[rows] = pool[torch.randint(0, len(pool), (len(rows),), generator=gen)]
    zeros = torch.zeros(n_rows, dtype=torch.long)
    return {"item_id": target, "likes_level": zeros, "views_level": zeros, "item_seq": seq, "label": label}


def _train_and_score(table: ItemTable, train: dict, valid: dict, steps: int = 40) -> float:
    torch.manual_seed(0)
    cfg = resolve_config("din", task1=False, embedding_dim=8, attention_hidden_units=[16, 8],
                         dnn_hidden_units=[32, 16], learning_rate=3e-3, net_dropout=0.0)
    model = build_model("din", cfg, table)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    n = train["item_id"].shape[0]
    for step in range(steps):
        idx = torch.randint(0, n, (128,))
        batch = {k: v[idx] for k, v in train.items()}
        loss = model.loss(model(batch), batch["label"]) + model.regularization_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return auc(valid["label"].numpy(), model.predict(valid).numpy())


def test_din_learns_from_informative_embeddings_not_from_random_ones():
    gen = torch.Generator().manual_seed(11)
    n_items, n_topics = 400, 4
    cluster = torch.randint(0, n_topics, (n_items + 1,), generator=gen)
    informative = torch.zeros(n_items + 1, 128)
    informative[torch.arange(n_items + 1), cluster] = 3.0  # the topic, visible in the embedding
    informative += 0.1 * torch.randn(n_items + 1, 128, generator=gen)
    train = _synthetic_clicks(cluster[1:], 2000, 6, seed=1)
    valid = _synthetic_clicks(cluster[1:], 600, 6, seed=2)
    for split in (train, valid):  # ids are 1-based
        split["item_id"] += 1
        split["item_seq"] += 1
    informed = _train_and_score(make_table(n_items=n_items, emb=informative), train, valid)
    random = _train_and_score(make_table(n_items=n_items, emb=torch.randn(n_items + 1, 128, generator=gen)),
                              train, valid)
    assert informed > 0.8 and informed > random + 0.2, (informed, random)
