"""ctr_eval.layers: the exact-algebra DIN attention equals FuxiCTR's plain form; blocks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ctr_eval import pair_ops
from ctr_eval.global_batch import (MASK_PIECE, GlobalBatchDropout, ReLUThenDropout, keep_mask,
                                   set_dropout_generator)
from ctr_eval.layers import (CrossNetV2, DINAttention, ItemEmbedding, MLPBlock,
                             fuxictr_reset_linear, norm_penalty)


pytestmark = pytest.mark.usefixtures("one_thread")


def _attention_inputs(seed: int, batch: int = 12, length: int = 9, dim: int = 16, table: int = 25):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    keys = torch.randn(table, dim, generator=gen, dtype=torch.float64)
    key_index = torch.randint(1, table, (batch, length), generator=gen)
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    lengths[0] = 0  # a row with no history
    lengths[1] = length  # a full row
    mask = torch.arange(length)[None, :] >= (length - lengths)[:, None]
    # as in the models: padded positions hold the padding item, whose vector is zero
    keys[0] = 0
    key_index[~mask] = 0
    return query, keys, key_index, mask


def _attention(dim=16, units=(32, 8), dropout=0.1, softmax=False, seed=0):
    torch.manual_seed(seed)
    layer = DINAttention(dim, units, dropout=dropout, use_softmax=softmax).double()
    fuxictr_reset_linear(layer)
    with torch.no_grad():  # non-zero biases so the bias path is tested too
        for m in layer.modules():
            if isinstance(m, nn.Linear):
                m.bias.normal_()
    return layer.eval()


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_attention_equals_plain_forward_and_backward(seed, softmax):
    layer = _attention(softmax=softmax, seed=seed)
    query, keys, key_index, mask = _attention_inputs(seed)
    outputs, grads = [], []
    for impl in ("exact", "plain"):
        q = query.clone().requires_grad_(True)
        k = keys.clone().requires_grad_(True)
        layer.zero_grad()
        out = layer(q, k, key_index, mask, impl=impl)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        outputs.append(out.detach())
        grads.append([q.grad, k.grad] + [p.grad.clone() for p in layer.parameters()])
    assert outputs[0].shape == (12, 16)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    if softmax:
        # plain softmax averages the (zero) padding vector into rows without history and so
        # sends it a gradient; in the models that vector is built from padding rows that
        # take no gradient, so only the other rows must agree
        grads[0][1], grads[1][1] = grads[0][1][1:], grads[1][1][1:]
    for g_exact, g_plain in zip(*grads):
        torch.testing.assert_close(g_exact, g_plain, rtol=1e-9, atol=1e-10)
    assert torch.all(outputs[0][0] == 0)  # no history -> nothing pooled


def test_exact_attention_float32_tolerance():
    layer = _attention().float()
    query, keys, key_index, mask = (t.float() if t.is_floating_point() else t for t in _attention_inputs(5))
    exact = layer(query, keys, key_index, mask, impl="exact")
    plain = layer(query, keys, key_index, mask, impl="plain")
    torch.testing.assert_close(exact, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["exact", "plain"])
def test_padded_positions_never_change_the_output(impl):
    layer = _attention()
    query, keys, key_index, mask = _attention_inputs(3)
    before = layer(query, keys, key_index, mask, impl=impl)
    # point padded positions to other rows and make those rows huge random vectors
    moved = key_index.clone()
    moved[~mask] = 24
    noisy = keys.clone()
    noisy[24] = torch.randn(16, dtype=keys.dtype) * 1e3
    if bool((key_index[mask] == 24).any()):
        pytest.skip("row 24 is used by a real position in this draw")
    after = layer(query, noisy, moved, mask, impl=impl)
    torch.testing.assert_close(before, after, rtol=1e-12, atol=1e-12)


def test_dropout_acts_in_training_and_not_in_eval():
    layer = _attention(dropout=0.5)
    query, keys, key_index, mask = _attention_inputs(4)
    layer.train()
    torch.manual_seed(0)
    a = layer(query, keys, key_index, mask)
    b = layer(query, keys, key_index, mask)
    assert not torch.allclose(a[mask.any(1)], b[mask.any(1)])
    layer.eval()
    torch.testing.assert_close(layer(query, keys, key_index, mask), layer(query, keys, key_index, mask))


def test_unknown_attention_impl_is_refused():
    layer = _attention()
    with pytest.raises(ValueError, match=r"unknown attention impl 'fast'; valid: \('exact', 'plain'\)"):
        layer(*_attention_inputs(0), impl="fast")


def test_mlp_block_layer_order_is_fuxictr():
    block = MLPBlock(10, [8, 4], output_dim=1, dropout=0.2, batch_norm=True)
    kinds = [type(m).__name__ for m in block.layers]
    assert kinds == ["Linear", "BatchNorm1d", "Identity", "ReLUThenDropout", "Linear", "BatchNorm1d",
                     "Identity", "ReLUThenDropout", "Linear"]
    # the parameter keys of the former ReLU + dropout layout: older checkpoints load
    assert sorted(block.state_dict()) == sorted(
        f"layers.{i}.{name}" for i, names in ((0, "wb"), (1, "bn"), (4, "wb"), (5, "bn"), (8, "wb"))
        for name in ({"wb": ["weight", "bias"],
                      "bn": ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]}[names]))
    assert [type(m).__name__ for m in MLPBlock(10, [8], dropout=0.0).layers] == ["Linear", "ReLU"]


def test_crossnet_v2_formula():
    torch.manual_seed(0)
    net = CrossNetV2(6, 2)
    x0 = torch.randn(3, 6)
    x1 = x0 + x0 * net.cross_layers[0](x0)
    x2 = x1 + x0 * net.cross_layers[1](x1)
    torch.testing.assert_close(net(x0), x2)


def test_item_encoder_layout_and_masked_mean():
    tags = torch.tensor([[0, 0, 0, 0, 0], [1, 2, 0, 0, 0], [3, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    emb = torch.randn(4, 128)
    emb[0] = 0
    enc = ItemEmbedding(tags, emb, embedding_dim=4)
    enc.reset_embeddings(std=1.0)
    out = enc(torch.tensor([1, 2, 3, 0]))
    assert out.shape == (4, 4 + 4 + 128) and enc.output_dim == 136
    tag_w = enc.tag_embedding.weight
    torch.testing.assert_close(out[0, 4:8], (tag_w[1] + tag_w[2]) / 2)
    torch.testing.assert_close(out[1, 4:8], tag_w[3])
    assert torch.all(out[2, 4:8] == 0)  # an item without tags pools to zero
    torch.testing.assert_close(out[0, 8:], enc.emb_projection(emb[1]))
    assert enc.emb_projection.bias is None
    assert torch.all(out[3] == 0)  # the padding item is all zero
    assert "item_emb" not in enc.state_dict() and "item_tags" not in enc.state_dict()


def test_fuxictr_reset_linear_only_touches_exact_linears():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 1)
    before = mha.out_proj.weight.clone()
    model = nn.Sequential(nn.Linear(8, 8), mha)
    fuxictr_reset_linear(model)
    assert torch.equal(mha.out_proj.weight, before)  # Linear subclass: left alone
    assert torch.all(model[0].bias == 0)


def test_norm_penalty_matches_fuxictr_form():
    a = nn.Parameter(torch.tensor([3.0, -4.0]))
    b = nn.Parameter(torch.tensor([[1.0, 2.0]]))
    value = norm_penalty([a, b], [(2, 0.1), (1, 0.01)])
    expected = 0.1 / 2 * (25 + 5) + 0.01 * (7 + 3)
    assert value.item() == pytest.approx(expected)
    assert norm_penalty([a], []) is None


def test_batch_unique_equals_torch_unique():
    from ctr_eval.layers import batch_unique

    ids = torch.tensor([5, 0, 3, 5, 9, 3, 3, 0])
    values, inverse = batch_unique(ids, 10)
    expected_values, expected_inverse = torch.unique(ids, return_inverse=True)
    assert torch.equal(values, expected_values) and torch.equal(inverse, expected_inverse)


def _dropout_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x = torch.rand(17, 40, generator=torch.Generator().manual_seed(3)) + 0.5
    drop = GlobalBatchDropout(0.3).train()
    drop.generator = torch.Generator().manual_seed(11)
    rows = slice(0, 7) if rank == 0 else slice(7, 17)  # unequal shares on purpose
    torch.save(drop(x[rows]), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_global_batch_dropout_across_two_processes_slices_the_one_process_mask(tmp_path):
    # Two processes holding rows 0..6 and 7..16 of a 17-row global batch apply exactly
    # the masks one process draws for all 17 rows; each finds its rows by itself.
    import torch.multiprocessing as mp

    mp.spawn(_dropout_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x = torch.rand(17, 40, generator=torch.Generator().manual_seed(3)) + 0.5
    drop = GlobalBatchDropout(0.3).train()
    drop.generator = torch.Generator().manual_seed(11)
    whole = drop(x)
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    kept = whole != 0
    torch.testing.assert_close(whole[kept], (x / 0.7)[kept])
    assert 0.5 < kept.float().mean().item() < 0.9  # 0.7 expected over 680 draws
    # a different seed draws different masks; evaluation mode is the identity
    drop.generator = torch.Generator().manual_seed(12)
    assert not torch.equal(drop(x) != 0, kept)
    assert torch.equal(drop.eval()(x), x)


def test_large_cpu_masks_are_drawn_in_seeded_pieces_whatever_the_thread_count():
    shape = (3 * MASK_PIECE // 64 + 5, 64)  # four pieces, the last one short
    threads = torch.get_num_threads()
    masks = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            masks.append(keep_mask(shape, 0.9, torch.Generator().manual_seed(7), torch.float32,
                                   torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1])
    flat = masks[0].view(-1)
    assert set(flat.unique().tolist()) == {0.0, 1.0}
    assert abs(flat.mean().item() - 0.9) < 1e-3  # 3.1M draws: sd of the mean 1.7e-4
    pieces = flat[: 3 * MASK_PIECE].view(3, MASK_PIECE)
    assert not torch.equal(pieces[0], pieces[1]) and not torch.equal(pieces[1], pieces[2])
    # independent pieces: dropped positions agree at the rate of chance, 0.1 * 0.1
    both_dropped = ((pieces[0] == 0) & (pieces[1] == 0)).float().mean().item()
    assert abs(both_dropped - 0.01) < 1e-3
    generator = torch.Generator().manual_seed(7)
    first = keep_mask(shape, 0.9, generator, torch.float32, torch.device("cpu"))
    second = keep_mask(shape, 0.9, generator, torch.float32, torch.device("cpu"))
    assert torch.equal(first, masks[0]) and not torch.equal(first, second)


def _saved_elements(fn, x):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = fn(x)
    return out, sum(saved)


def test_relu_then_dropout_is_the_pair_of_layers_keeping_only_its_output():
    x = torch.randn(300, 40, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(300, 40, generator=torch.Generator().manual_seed(1))
    fused, relu, drop = ReLUThenDropout(0.3).train(), torch.nn.ReLU(inplace=True), GlobalBatchDropout(0.3).train()
    fused.generator, drop.generator = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    outs, grads, saved = [], [], []
    for fn in (fused, lambda t: drop(relu(t))):
        leaf = x.clone().requires_grad_(True)
        out, n = _saved_elements(fn, leaf * 1.0)  # a non-leaf input, as after a Linear
        out.backward(grad)
        outs.append(out.detach())
        grads.append(leaf.grad)
        saved.append(n)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])  # bit for bit
    assert (outs[0] == 0).float().mean() > 0.5  # ReLU zeros about half, dropout 30% of the rest
    assert saved == [x.numel(), 2 * x.numel()]  # the pair also keeps the ReLU output and the mask
    assert torch.equal(fused.eval()(x.clone()), x.clamp_min(0))


def test_global_batch_dropout_without_generator_is_plain_dropout():
    drop = GlobalBatchDropout(0.5).train()
    out = drop(torch.ones(4000))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert abs((out == 0).float().mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\), got 1.0"):
        GlobalBatchDropout(1.0)


def test_set_dropout_generator_reaches_every_dropout_layer():
    from ctr_eval.models.din import DINConfig
    from ctr_eval.data import ItemTable
    from ctr_eval.models import build_model

    table = ItemTable(tags=torch.zeros(6, 5, dtype=torch.long), emb=torch.rand(6, 128))
    table.emb[0] = 0
    model = build_model("din", DINConfig(), table)
    layers = [m for m in model.modules() if isinstance(m, GlobalBatchDropout)]
    assert len(layers) == 5  # attention MLP (2 hidden layers) and DNN (3), net_dropout 0.1
    generator = torch.Generator()
    set_dropout_generator(model, generator)
    assert all(m.generator is generator for m in layers)
    set_dropout_generator(model, None)
    assert all(m.generator is None for m in layers)


@pytest.mark.parametrize("chunk", [5, 1 << 15])  # several chunks, and one
def test_pair_ops_equal_their_plain_formulas_forward_and_backward(monkeypatch, chunk):
    monkeypatch.setattr(pair_ops, "CHUNK_ROWS", chunk)
    gen = torch.Generator().manual_seed(3)
    batch, items, d, h, pairs = 6, 9, 4, 7, 23

    def leaf(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)

    query, keys, q_part, k_part, w_p, scores = leaf(batch, d), leaf(items, d), leaf(batch, h), leaf(items, h), \
        leaf(h, d), leaf(pairs)
    rows = torch.randint(0, batch, (pairs,), generator=gen)
    key_rows = torch.randint(0, items, (pairs,), generator=gen)
    inputs = (query, keys, q_part, k_part, w_p, scores)

    def plain():
        k_rows = keys[key_rows]
        hidden = k_part[key_rows] + q_part[rows] + (query[rows] * k_rows) @ w_p.t()
        pooled = torch.zeros(batch, d, dtype=torch.float64).index_add(0, rows, scores[:, None] * k_rows)
        return hidden, pooled

    def fused():
        return (pair_ops.pair_first_layer(query, keys, q_part, k_part, w_p, rows, key_rows),
                pair_ops.pair_weighted_sum(scores, keys, rows, key_rows, batch))

    results = []
    for fn in (fused, plain):
        hidden, pooled = fn()
        weights = torch.linspace(-1, 1, hidden.numel(), dtype=torch.float64).reshape(hidden.shape)
        grads = torch.autograd.grad((hidden * weights).sum() + (pooled ** 2).sum(), inputs)
        results.append((hidden.detach(), pooled.detach(), grads))
    (h1, p1, g1), (h2, p2, g2) = results
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p1, p2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda *t: pair_ops.pair_first_layer(*t[:5], rows, key_rows), inputs[:5])
    assert torch.autograd.gradcheck(lambda s, k: pair_ops.pair_weighted_sum(s, k, rows, key_rows, batch),
                                    (scores, keys))


def test_pair_ops_keep_no_per_pair_activation_for_backward():
    # 5,000 pairs of width 64 from 10 queries and 10 keys: a plain formulation keeps the
    # gathered keys, queries and their product (3 x 320,000 elements); these keep inputs
    # and index lists only
    batch, items, d, pairs = 10, 10, 64, 5000
    query, keys = torch.randn(batch, d, requires_grad=True), torch.randn(items, d, requires_grad=True)
    q_part, k_part = torch.randn(batch, 8, requires_grad=True), torch.randn(items, 8, requires_grad=True)
    w_p = torch.randn(8, d, requires_grad=True)
    rows, key_rows = torch.randint(0, batch, (pairs,)), torch.randint(0, items, (pairs,))
    _, first = _saved_elements(lambda q: pair_ops.pair_first_layer(q, keys, q_part, k_part, w_p, rows, key_rows),
                               query)
    _, pooled = _saved_elements(lambda s: pair_ops.pair_weighted_sum(s, keys, rows, key_rows, batch),
                                torch.randn(pairs, requires_grad=True))
    assert first == 2 * batch * d + 8 * d + 2 * pairs
    assert pooled == pairs + items * d + 2 * pairs


def test_exact_attention_runs_under_bf16_autocast_like_the_plain_form():
    layer = _attention().float().train(False)
    query, keys, key_index, mask = (t.float() if t.is_floating_point() else t for t in _attention_inputs(4))
    outs, grads = [], []
    for impl in ("exact", "plain"):
        q, k = query.clone().requires_grad_(True), keys.clone().requires_grad_(True)
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(q, k, key_index, mask, impl=impl)
        out.float().sum().backward()
        outs.append(out.float().detach())
        grads.append([q.grad, k.grad, layer.first_layer.weight.grad])
    assert outs[0].abs().max() > 1 and all(g.abs().max() > 1 for g in grads[0])  # tolerances well below the values
    assert all(g.dtype == torch.float32 for g in grads[0])  # gradients in each input's dtype
    torch.testing.assert_close(outs[0], outs[1], rtol=0.05, atol=0.05)
    for exact, plain in zip(*grads):
        torch.testing.assert_close(exact, plain, rtol=0.1, atol=0.1)
