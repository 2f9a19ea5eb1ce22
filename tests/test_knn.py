"""Neighbour checks on planted data whose neighbours are known, and the proxy AUC by hand."""
from __future__ import annotations

import numpy as np
import pytest

from mmembed.knn import (coclick_hit, collapse_stats, history_proxy_auc,
                         neighbour_report, neighbours, tag_overlap, truth_overlap)


def _clusters(n_clusters=20, size=10, dim=16, noise=0.05, seed=0):
    """Items in tight clusters: each item's 9 true neighbours are its cluster mates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    cluster = np.repeat(np.arange(n_clusters), size)
    vectors = centres[cluster] + noise * rng.standard_normal((len(cluster), dim))
    return vectors.astype(np.float32), cluster


def test_exact_neighbours_are_the_cluster_mates_and_never_self():
    vectors, cluster = _clusters()
    found = neighbours(vectors, k=9)
    assert found.index.shape == (200, 9) and found.recall is None and "exact" in found.method
    assert not (found.index == np.arange(200)[:, None]).any()
    assert (cluster[found.index] == cluster[:, None]).all()
    assert np.all(np.diff(found.score, axis=1) <= 1e-6)  # best first
    # scores are cosines: the same direction scaled scores 1
    scaled = neighbours(np.vstack([vectors[:1], 3 * vectors[:1], vectors[1:50]]), k=1)
    assert scaled.index[0, 0] == 1 and scaled.score[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_approximate_search_reports_its_recall_against_exact():
    vectors, cluster = _clusters(n_clusters=40, size=25)
    found = neighbours(vectors, k=5, exact_limit=100)
    assert "approximate" in found.method and 0.9 <= found.recall <= 1.0
    assert (cluster[found.index] == cluster[:, None]).mean() > 0.95


def test_sampled_queries_equal_the_full_search_on_those_rows():
    vectors, cluster = _clusters()
    full = neighbours(vectors, k=9)
    rows = np.array([3, 50, 51, 199])
    some = neighbours(vectors, k=9, queries=rows)
    assert some.index.shape == (4, 9) and some.rows.tolist() == rows.tolist()
    assert (np.sort(some.index, axis=1) == np.sort(full.index[rows], axis=1)).all()
    tags = np.stack([cluster + 1, np.zeros_like(cluster)], axis=1)
    tags[rows[0]] = 0  # an item without tags is left out of tag overlap
    assert tag_overlap(some.index, tags, rows) == 1.0
    wrong = (some.index + 10) % 200  # a cluster over: no shared tags, no truth overlap
    assert tag_overlap(wrong, tags, rows) == 0.0
    assert truth_overlap(some.index, full.index[rows]) == 1.0
    assert truth_overlap(wrong, full.index[rows]) == 0.0
    # ids are rows + 1: item 3 sits beside its first neighbour, item 50 beside item 199
    # (not its neighbour), item 7 (no query) beside 8
    histories = np.array([[4, int(some.index[0, 0]) + 1, 0], [51, 200, 0], [8, 9, 0]])
    assert coclick_hit(some.index, histories, rows, 200) == pytest.approx(1 / 3)  # 3 hits; 50, 199 miss
    with pytest.raises(ValueError, match="pass n_items"):
        coclick_hit(some.index, histories, rows)


def test_beyond_the_exact_limit_the_floor_and_truth_use_sampled_queries(monkeypatch):
    import mmembed.knn as knn

    vectors, cluster = _clusters(n_clusters=40, size=25)
    tags = np.stack([cluster + 1, np.zeros_like(cluster)], axis=1)
    whole = neighbour_report(vectors, tags=tags, truth=vectors, k=9)
    monkeypatch.setattr(knn, "EXACT_LIMIT", 500)
    monkeypatch.setattr(knn, "SAMPLED_QUERIES", 300)
    sampled = neighbour_report(vectors, tags=tags, truth=vectors, k=9)
    assert "300 query items" in sampled.floor["method"] and "approximate" in sampled.metrics["method"]
    assert 0.9 <= sampled.metrics["recall"] <= 1.0
    assert sampled.metrics["tag_overlap"] > 0.95 and sampled.metrics["truth_overlap"] > 0.9
    for name in ("tag_overlap", "truth_overlap"):  # chance level either way: about 24/999 and 9/999
        assert sampled.floor[name] < 0.1 and whole.floor[name] < 0.1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"k must be in 1\.\.2 for 3 items, got 3"):
        neighbours(np.eye(3), k=3)
    with pytest.raises(ValueError, match="needs an \\(N, d\\) array"):
        neighbours(np.ones(5), k=1)


def test_tag_overlap_counts_shared_nonzero_tags():
    tags = np.array([[1, 2, 0], [2, 0, 0], [3, 0, 0], [0, 0, 0]])
    index = np.array([[1, 2], [0, 2], [0, 1], [0, 1]])
    # item 0: shares with 1 not 2; item 1: with 0 not 2; item 2: none; item 3 has no tags
    assert tag_overlap(index, tags) == pytest.approx(2 / 6)


def test_coclick_hits_from_histories():
    histories = np.array([[0, 1, 2, 3], [0, 0, 4, 1]])  # ids; row = id - 1
    # partners: 0-1, 1-2, 3-0; item 4 (id 5) has none
    index = np.array([[1], [4], [3], [2], [0]])
    assert coclick_hit(index, histories) == pytest.approx(1 / 4)  # item 0 hits
    assert coclick_hit(index, histories, chunk=1) == pytest.approx(1 / 4)  # streamed row by row
    assert coclick_hit(np.array([[1], [0], [1], [0], [0]]), histories) == 1.0
    # window 2 adds 0-2 (ids 1, 3): item 2's neighbour 3 is still no partner, item 1's 4 neither
    assert coclick_hit(index, histories, window=2) == pytest.approx(1 / 4)
    assert np.isnan(coclick_hit(index, np.zeros((2, 4), np.int64)))


def test_truth_overlap_and_collapse_diagnostics():
    vectors, cluster = _clusters()
    found = neighbours(vectors, k=9)
    assert truth_overlap(found.index, found.index) == 1.0
    with pytest.raises(ValueError, match="same queries"):
        truth_overlap(found.index, found.index[:5])
    shuffled = neighbours(np.random.default_rng(1).standard_normal(vectors.shape), k=9)
    assert truth_overlap(shuffled.index, found.index) < 0.2
    stats = collapse_stats(vectors, found)
    assert stats["near_duplicate_share"] == 1.0  # cluster mates are 0.99+ cosine
    assert 10 < stats["effective_rank"] <= 16
    collapsed = np.outer(np.arange(1, 201), np.ones(16)).astype(np.float32)
    one = collapse_stats(collapsed, neighbours(collapsed, k=3))
    assert one["top1_variance"] == pytest.approx(1.0) and one["effective_rank"] == pytest.approx(1.0)


def test_report_beats_its_random_floor_on_planted_data():
    vectors, cluster = _clusters()
    histories = np.stack([np.r_[0, 0, np.flatnonzero(cluster == c)[:8] + 1] for c in range(20)])
    tags = np.stack([cluster + 1, np.zeros_like(cluster)], axis=1)
    report = neighbour_report(vectors, tags=tags, histories=histories, truth=vectors, k=9)
    assert report.metrics["tag_overlap"] == 1.0 and report.floor["tag_overlap"] < 0.2
    assert report.metrics["coclick_hit"] == 1.0 and report.floor["coclick_hit"] < 0.5
    assert report.metrics["truth_overlap"] == 1.0 and report.floor["truth_overlap"] < 0.2


def test_history_proxy_auc_matches_a_hand_computation():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)  # ids 1, 2, 3
    histories = np.array([[0, 1], [1, 2], [0, 0], [2, 2]])
    targets = np.array([3, 2, 1, 1])
    labels = np.array([1, 1, 0, 0])
    # scores: cos(e1, (1,1)) = 0.707; cos((1,1), e2) = 0.707; empty history -> 0; cos(e2, e1) = 0
    # positives {0.707, 0.707} all above negatives {0, 0}: AUC 1
    assert history_proxy_auc(vectors, histories, targets, labels) == 1.0
    labels = np.array([1, 0, 1, 0])  # positives {0.707, 0}, negatives {0.707, 0}: ties -> 0.5
    assert history_proxy_auc(vectors, histories, targets, labels) == pytest.approx(0.5)


def test_knn_command_prints_the_checks_beside_their_floor(tiny_root, tmp_path, capsys):
    from mmembed.cli import main

    assert main(["knn", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "600 items, top-10 cosine neighbours by exact (IndexFlatIP)" in out
    for name in ("tag_overlap", "coclick_hit", "truth_overlap", "effective_rank", "history proxy AUC"):
        assert name in out
    assert "(random table" in out
    import pyarrow as pa
    import pyarrow.parquet as pq

    short = tmp_path / "short.parquet"
    pq.write_table(pa.table({"item_id": [0, 1], "item_tags": [[0] * 5, [1] * 5],
                             "item_emb_d128": [[0.0] * 128, [1.0] * 128]}), short)
    assert main(["knn", str(tiny_root), "--item-info", str(short)]) == 2
    assert "--item-info" in capsys.readouterr().err


def test_a_collapsed_table_is_called_so_and_its_neighbour_metrics_are_not_shown(tiny_root, tmp_path, capsys):
    from mmembed.cli import main
    from mmembed.knn import collapse_verdict, neighbour_report

    rng = np.random.default_rng(0)
    one = rng.standard_normal(128).astype(np.float32)
    for noise in (0.0, 1e-6):  # identical rows, and the same with a little noise (rank reads high)
        table = np.tile(one, (601, 1)) + noise * rng.standard_normal((601, 128)).astype(np.float32)
        table[0] = 0
        path = tmp_path / f"collapsed{noise}.npy"
        np.save(path, table)
        assert main(["knn", str(tiny_root), "--item-info", str(path)]) == 0
        out = capsys.readouterr().out
        assert "collapsed table: 100% of items have a near-duplicate neighbour" in out
        assert "tag_overlap" not in out and "coclick_hit" not in out and "effective_rank" in out
    healthy = neighbour_report(rng.standard_normal((300, 16)), k=10)
    assert collapse_verdict(healthy.metrics) is None


def test_neighbour_report_refuses_short_and_non_finite_tables():
    from mmembed.knn import neighbour_report

    with pytest.raises(ValueError, match=r"needs an \(N, d\) array of N > k = 10 items, got shape \(5, 4\)"):
        neighbour_report(np.ones((5, 4)))
    bad = np.random.default_rng(0).standard_normal((50, 4))
    bad[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"2 row\(s\) hold NaN or infinite values \(first: row 3, 7\)"):
        neighbour_report(bad)


def test_knn_says_which_table_formats_it_reads(tiny_root, tmp_path, capsys):
    from mmembed.cli import main

    (tmp_path / "x.csv").write_text("1,2\n")
    assert main(["knn", str(tiny_root), "--item-info", str(tmp_path / "x.csv")]) == 2
    assert "reads an item_info.parquet (its item_emb_d128 column) or an (N+1, d) .npy array" in capsys.readouterr().err
