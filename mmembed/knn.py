"""Neighbour checks of an item embedding table, with FAISS, and the history proxy AUC.

    from mmembed.knn import neighbours, neighbour_report, history_proxy_auc
    found = neighbours(vectors, k=10)                 # cosine kNN, exact up to 20,000 items
    report = neighbour_report(vectors, tags=tags, histories=train_seq, truth=latent)
    history_proxy_auc(table, valid_seq, valid_targets, valid_labels)

Every function takes item vectors by *row* (row r = the r-th item); histories hold item
ids where id i is row i - 1 and 0 is padding, as the fusion heads' ``sequences`` do.

Cosine neighbours use ``IndexFlatIP`` on L2-normalised vectors (exact) up to
``exact_limit`` items (20,000) and an inverted-file index beyond it, whose recall against
exact search is measured on a sample of queries and reported. An item is never its own
neighbour. A search can be limited to some query rows (``queries=``): every metric then
averages over those rows. Beyond ``exact_limit`` items, :func:`neighbour_report` searches
the random floor and the truth's neighbours exactly for ``SAMPLED_QUERIES`` sampled items.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Neighbours", "neighbours", "neighbour_report", "history_proxy_auc", "collapse_stats",
           "collapse_verdict", "tag_overlap", "coclick_hit", "truth_overlap"]

EXACT_LIMIT = 20_000
RECALL_QUERIES = 2_000
SAMPLED_QUERIES = 5_000
COLLAPSED_DUPLICATE_SHARE = 0.5  # at least half the items with a near-duplicate neighbour
COLLAPSED_RANK = 2.0  # or an effective rank under 2: the table is (nearly) one vector


@dataclass
class Neighbours:
    """Top-k cosine neighbours of the query rows ``rows`` (all rows when None): ``index``
    (Q, k) rows, ``score`` (Q, k) cosines, best first."""

    index: np.ndarray
    score: np.ndarray
    method: str
    seconds: float
    recall: float | None = None  # of an approximate search against exact, on a sample
    rows: np.ndarray | None = None


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def neighbours(vectors: np.ndarray, k: int = 10, exact_limit: int | None = None,
               seed: int = 0, queries: np.ndarray | None = None) -> Neighbours:
    """Cosine kNN of every row (or of the rows ``queries``, searched exactly) among all
    the others, self excluded; exact up to ``exact_limit`` rows (default EXACT_LIMIT)."""
    import faiss

    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"neighbours needs an (N, d) array with N >= 2, got shape {vectors.shape}")
    if not 1 <= k < len(vectors):
        raise ValueError(f"k must be in 1..{len(vectors) - 1} for {len(vectors)} items, got {k}")
    x = _unit_rows(vectors)
    started = time.perf_counter()
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    if queries is not None:
        queries = np.asarray(queries, dtype=np.int64)
        score, index = exact.search(x[queries], k + 1)
        method, recall = f"exact (IndexFlatIP) for {len(queries):,} query items", None
    elif len(x) <= (EXACT_LIMIT if exact_limit is None else exact_limit):
        score, index = exact.search(x, k + 1)
        method, recall = "exact (IndexFlatIP)", None
    else:
        approx, method = _approximate_index(x, seed)
        score, index = approx.search(x, k + 1)
        recall = _recall(exact, x, index, k, seed)
    index, score = _drop_self(index, score, k, rows=queries)
    return Neighbours(index, score, method, time.perf_counter() - started, recall, queries)


def _approximate_index(x: np.ndarray, seed: int):
    import faiss

    lists = int(min(4 * np.sqrt(len(x)), len(x) // 50))  # >= 50 training points per list
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10  # k-means iterations for the lists (FAISS's default 25 buys little recall)
    sample = np.random.default_rng(seed).choice(len(x), size=min(len(x), 50 * lists), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = max(1, lists // 25)  # recall about 0.9 on a MicroLens-sized table
    return index, f"approximate (IndexIVFFlat, {lists} lists, nprobe {index.nprobe})"


def _recall(exact, x: np.ndarray, found: np.ndarray, k: int, seed: int) -> float:
    queries = np.random.default_rng(seed + 1).choice(len(x), size=min(len(x), RECALL_QUERIES),
                                                     replace=False)
    _, truth = exact.search(x[queries], k + 1)
    truth, _ = _drop_self(truth, np.zeros_like(truth, dtype=np.float32), k, rows=queries)
    got, _ = _drop_self(found[queries], np.zeros_like(found[queries], dtype=np.float32), k, rows=queries)
    hits = [len(set(a) & set(b)) for a, b in zip(truth.tolist(), got.tolist())]
    return float(np.sum(hits) / (len(queries) * k))


def _drop_self(index: np.ndarray, score: np.ndarray, k: int,
               rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first k results of each row that are not the row itself (when a row is not
    among its own results, e.g. duplicate vectors tied, its weakest result goes)."""
    rows = np.arange(len(index)) if rows is None else rows
    is_self = index == rows[:, None]
    take = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # non-self first, order kept
    return np.take_along_axis(index, take, axis=1), np.take_along_axis(score, take, axis=1)


# --------------------------------------------------------------------------- metrics


def _query_rows(index: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return np.arange(len(index)) if rows is None else np.asarray(rows, dtype=np.int64)


def tag_overlap(index: np.ndarray, tags: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Share of (item, neighbour) pairs that have at least one non-zero tag in common,
    over query items (``rows``; default all) with at least one tag."""
    tags = np.asarray(tags)
    rows = _query_rows(index, rows)
    has = (tags[rows] != 0).any(axis=1)
    q = tags[rows][:, None, :, None]  # (Q, 1, T, 1)
    n = tags[index][:, :, None, :]  # (Q, k, 1, T)
    shared = ((q == n) & (q != 0)).any(axis=(2, 3))  # (Q, k)
    return float(shared[has].mean()) if has.any() else float("nan")


def coclick_hit(index: np.ndarray, histories: np.ndarray, rows: np.ndarray | None = None,
                n_items: int | None = None, window: int = 1, chunk: int = 50_000) -> float:
    """Share of query items (``rows`` of ``n_items``; default all) with a co-click partner
    among their neighbours, over query items that have partners. Partners: distinct items
    within ``window`` positions of each other in some history (ids; 0 = padding). The
    histories are streamed in chunks of rows, so a million of them need no pair table."""
    if rows is not None and n_items is None:
        raise ValueError("coclick_hit: with query rows, pass n_items (the number of items)")
    n = len(index) if n_items is None else n_items
    rows = _query_rows(index, rows)
    slot = np.full(n, -1, dtype=np.int64)  # item row -> its query position
    slot[rows] = np.arange(len(rows))
    index = np.asarray(index, dtype=np.int32)
    has = np.zeros(len(rows), dtype=bool)
    hit = np.zeros(len(rows), dtype=bool)
    seq = np.asarray(histories)
    for start in range(0, len(seq), chunk):
        block = seq[start:start + chunk].astype(np.int64)
        for shift in range(1, window + 1):
            a, b = block[:, :-shift].ravel(), block[:, shift:].ravel()
            real = (a > 0) & (b > 0) & (a != b)
            a, b = a[real] - 1, b[real] - 1
            for item, partner in ((a, b), (b, a)):
                query = slot[item]
                keep = query >= 0
                query, partner = query[keep], partner[keep]
                has[query] = True
                hit[query[(index[query] == partner[:, None]).any(axis=1)]] = True
    return float(hit[has].mean()) if has.any() else float("nan")


def truth_overlap(index: np.ndarray, truth_index: np.ndarray) -> float:
    """Mean share of each query item's neighbours that are also its neighbours under the
    truth; ``index`` and ``truth_index`` (Q, k) hold the same query items row by row."""
    index, truth_index = np.asarray(index), np.asarray(truth_index)
    if index.shape != truth_index.shape:
        raise ValueError(f"truth_overlap needs neighbours of the same queries, got shapes "
                         f"{index.shape} and {truth_index.shape}")
    return float((index[:, :, None] == truth_index[:, None, :]).any(axis=2).mean())


def collapse_stats(vectors: np.ndarray, found: Neighbours, duplicate_cosine: float = 0.99) -> dict:
    """Signs of a collapsed table: near-duplicate share, effective rank, top variance."""
    x = np.asarray(vectors, dtype=np.float64)
    centred = x - x.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    variance = singular**2 / max((singular**2).sum(), 1e-300)
    nonzero = variance[variance > 0]
    return {
        "near_duplicate_share": float((found.score[:, 0] > duplicate_cosine).mean()),
        "effective_rank": float(np.exp(-(nonzero * np.log(nonzero)).sum())),
        "top1_variance": float(variance[0]),
        "top10_variance": float(variance[:10].sum()),
    }


def collapse_verdict(metrics: dict) -> str | None:
    """One line saying that a table is collapsed (most items near-duplicates of a neighbour,
    or an effective rank under 2), else None. On such a table a neighbour list is a tie
    broken by row order, so tag overlap, co-click hit and truth overlap mean nothing."""
    share, rank = metrics.get("near_duplicate_share", 0.0), metrics.get("effective_rank", np.inf)
    if share >= COLLAPSED_DUPLICATE_SHARE or rank < COLLAPSED_RANK:
        return (f"collapsed table: {share:.0%} of items have a near-duplicate neighbour (cosine > 0.99) and "
                f"the effective rank is {rank:.1f}; its neighbours are ties, so the neighbour metrics "
                "mean nothing on it")
    return None


def _check_table(vectors: np.ndarray, k: int, what: str) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2 or len(x) <= k:
        raise ValueError(f"{what} needs an (N, d) array of N > k = {k} items, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{what}: {len(rows):,} row(s) hold NaN or infinite values (first: row "
                         f"{', '.join(map(str, rows[:5]))}); every item needs a finite vector")
    return x


@dataclass
class NeighbourReport:
    metrics: dict
    floor: dict  # the same metrics for a random table of the same shape
    neighbours: Neighbours = field(repr=False)


def neighbour_report(vectors: np.ndarray, tags: np.ndarray | None = None,
                     histories: np.ndarray | None = None, truth: np.ndarray | None = None,
                     k: int = 10, seed: int = 0) -> NeighbourReport:
    """All neighbour checks of a table, and the same for a random table as the floor.

    Beyond ``EXACT_LIMIT`` items (where the table's search is approximate), the floor and
    the truth's neighbours are searched exactly for ``SAMPLED_QUERIES`` sampled items, and
    the truth overlap averages over those (the table's other metrics cover every item).
    There the table's metrics come from approximate neighbours (``recall`` says how close)
    while the floor's and the truth's are exact, which tends to understate the table."""
    vectors = _check_table(vectors, k, "neighbour_report")
    if truth is not None:
        truth = _check_table(truth, k, "neighbour_report (truth)")
    n = len(vectors)
    rng = np.random.default_rng(seed)
    random_table = rng.standard_normal(np.shape(vectors)).astype(np.float32)
    sample = None if n <= EXACT_LIMIT else np.sort(rng.choice(n, min(n, SAMPLED_QUERIES), replace=False))
    truth_found = neighbours(truth, k, queries=sample) if truth is not None else None

    def metrics(found: Neighbours, table: np.ndarray) -> dict:
        out = {"k": k, "method": found.method, "seconds": found.seconds, "recall": found.recall,
               **collapse_stats(table, found)}
        if tags is not None:
            out["tag_overlap"] = tag_overlap(found.index, tags, found.rows)
        if histories is not None:
            out["coclick_hit"] = coclick_hit(found.index, histories, found.rows, n)
        if truth_found is not None:
            on_sample = found.index if sample is None or found.rows is not None else found.index[sample]
            out["truth_overlap"] = truth_overlap(on_sample, truth_found.index)
        return out

    found = neighbours(vectors, k, seed=seed)
    floor = metrics(neighbours(random_table, k, queries=sample), random_table)
    return NeighbourReport(metrics(found, vectors), floor, found)


def history_proxy_auc(vectors: np.ndarray, histories: np.ndarray, targets: np.ndarray,
                      labels: np.ndarray) -> float:
    """AUC of cos(mean of the history items' vectors, the target's vector) against the
    labels. ``histories`` (rows, L) and ``targets`` (rows,) hold item ids (row + 1; 0 =
    padding); a row with no history scores 0. Needs no training: seconds, not minutes."""
    from ctr_eval.metrics import auc

    x = np.vstack([np.zeros((1, np.shape(vectors)[1]), np.float32), _unit_rows(vectors)])
    seq = np.asarray(histories, dtype=np.int64)
    counts = (seq > 0).sum(axis=1, keepdims=True)
    pooled = x[seq].sum(axis=1) / np.maximum(counts, 1)
    scores = (_unit_rows(pooled) * x[np.asarray(targets, dtype=np.int64)]).sum(axis=1)
    scores[counts[:, 0] == 0] = 0.0
    return float(auc(np.asarray(labels), scores))
