"""The PNG figures of a run report, drawn on matplotlib's Agg canvas.

Figures are built as ``matplotlib.figure.Figure`` objects with their own Agg canvas, so
nothing here touches pyplot's global state or the process-wide backend. PNGs are saved
without matplotlib's version string, so the same run draws the same bytes.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["auc_plot", "history_plot", "embedding_map", "draw_map", "pca_2d", "sample_items", "write_thumbnail",
           "DatasetItems", "MAP_ITEMS"]

MAP_ITEMS = 3000  # items drawn per map, sampled with a fixed seed
TOP_TAGS = 10  # first tags given a colour on the map; the rest are grey
_AUC_METRICS = (("valid_auc", "validation AUC"), ("test_auc", "test AUC"), ("rare_test_auc", "rare-item test AUC"))
_GREY = "#b8b8b8"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def _label(row: dict) -> str:
    return row["embedding"] + (" (random-init)" if row["untrained"] else "")


def _values(row: dict, key: str) -> list[float]:
    return [float(r[key]) for r in row["records"] if r.get(key) is not None and np.isfinite(r[key])]


# --------------------------------------------------------------------------- AUC


def auc_plot(rows: list[dict], path: Path) -> Path | None:
    """Mean AUC per strategy with a seed standard-deviation bar and each seed as a dot,
    one panel per AUC that was computed; ``rows`` from ``results.summary_rows``. None
    when no row has any AUC."""
    metrics = [(key, title) for key, title in _AUC_METRICS if any(_values(row, key) for row in rows)]
    if not metrics:
        return None
    models = list(dict.fromkeys(row["model"] for row in rows))
    labels = list(dict.fromkeys(_label(row) for row in rows))
    fig = _figure(max(6.0, 1.0 + 0.75 * len(labels)) * len(metrics) / 1.5, 4.2)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (key, title) in zip(axes, metrics):
        for m, model in enumerate(models):
            offset = (m - (len(models) - 1) / 2) * 0.18
            for row in (r for r in rows if r["model"] == model):
                _auc_point(ax, labels.index(_label(row)) + offset, _values(row, key), f"C{m}", row["untrained"])
        ax.axhline(0.5, color=_GREY, linestyle="--", linewidth=1)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylabel("AUC (mean ± sd over seeds)")
        ax.grid(axis="y", alpha=0.3)
    if len(models) > 1:
        handles = [axes[0].plot([], [], "o", color=f"C{m}")[0] for m in range(len(models))]
        fig.legend(handles, models, loc="outside upper center", ncols=len(models))
    return _save(fig, path)


def _auc_point(ax, x: float, values: list[float], colour: str, untrained: bool) -> None:
    if not values:
        return
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    ax.errorbar([x], [np.mean(values)], yerr=[sd], fmt="s" if untrained else "o", color=colour,
                markerfacecolor="white" if untrained else colour, capsize=5, markersize=8, zorder=3)
    ax.scatter(np.full(len(values), x + 0.07), values, s=12, color=colour, alpha=0.45, zorder=2)


# --------------------------------------------------------------------------- history


def history_plot(records: list[dict], path: Path) -> Path | None:
    """Validation AUC per epoch: one panel per CTR model, one colour per embedding, one
    line per seed. None when no record has a history."""
    records = [r for r in records if r.get("history")]
    if not records:
        return None
    models = list(dict.fromkeys(r["model"] for r in records))
    embeddings = list(dict.fromkeys(r["embedding"] for r in records))
    fig = _figure(6.5 * len(models), 4.2)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        drawn: set[str] = set()
        for r in (r for r in records if r["model"] == model):
            colour = f"C{embeddings.index(r['embedding']) % 10}"
            epochs = [h["epoch"] for h in r["history"]]
            aucs = [h["valid_auc"] for h in r["history"]]
            label = None if r["embedding"] in drawn else r["embedding"] + (" (random-init)" if r.get("untrained") else "")
            ax.plot(epochs, aucs, marker="o", markersize=3, color=colour, label=label,
                    linestyle="--" if r.get("untrained") else "-", alpha=0.85)
            drawn.add(r["embedding"])
        last = max(h["epoch"] for r in records if r["model"] == model for h in r["history"])
        ax.set_xlim(0.5, last + 0.5)  # whole epochs, also when there is only one
        ax.set_title(f"{model}: validation AUC per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation AUC")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- 2-D map


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of ``x`` (n, d) and their explained-variance
    shares; signs fixed so each component's largest loading is positive."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    variance, vectors = np.linalg.eigh(centred.T @ centred)  # (d, d): cheaper than an SVD of (n, d)
    order = np.argsort(variance)[::-1][:2]
    vt = vectors[:, order].T
    vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    total = float(np.clip(variance, 0, None).sum())
    share = np.clip(variance[order], 0, None) / total if total > 0 else np.zeros(len(order))
    coords = centred @ vt.T
    if coords.shape[1] < 2:  # a 1-d table
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        share = np.pad(share, (0, 2 - len(share)))
    return coords, share


def sample_items(n_items: int, max_items: int = MAP_ITEMS, seed: int = 0) -> np.ndarray:
    """Sorted item ids (1..n_items) drawn once with a fixed seed, the same for every map."""
    ids = np.arange(1, n_items + 1)
    if n_items <= max_items:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=max_items, replace=False))


def embedding_map(panels: Sequence[tuple[str, np.ndarray]], first_tags: np.ndarray, path: Path,
                  max_items: int = MAP_ITEMS, seed: int = 0) -> Path | None:
    """A PCA map per table (``panels``: (title, (N+1, d) table), row i = item i) of the
    same sampled items, coloured by each item's first tag (``first_tags`` (N+1,), 0 = none):
    the ``TOP_TAGS`` most common tags in colour, the rest grey. None without panels."""
    if not panels:
        return None
    items = sample_items(len(first_tags) - 1, max_items, seed)
    tags = first_tags[items]
    top = [t for t, _ in Counter(int(t) for t in tags if t != 0).most_common(TOP_TAGS)]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(4.6 * cols, 4.2 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, table) in zip(axes, panels):
        coords, share = pca_2d(table[items])
        other = ~np.isin(tags, top)
        ax.scatter(coords[other, 0], coords[other, 1], s=5, color=_GREY, alpha=0.5, linewidths=0)
        for i, tag in enumerate(top):
            pick = tags == tag
            ax.scatter(coords[pick, 0], coords[pick, 1], s=9, color=f"C{i}", linewidths=0, label=f"tag {tag}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)", fontsize=8)
        ax.set_ylabel(f"PC2 ({share[1]:.0%})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if top:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(top) + 1, 6), markerscale=2,
                   title=f"first tag ({len(items)} items; other tags grey)")
    return _save(fig, path)


# --------------------------------------------------------------------------- the dataset's items and covers


class DatasetItems:
    """Titles, first tags and covers of the run's dataset; empty when it cannot be read."""

    def __init__(self, root: str | None):
        self.catalog, self.reason, self.position = None, "the run folder names no dataset", {}
        if root:
            from mmembed.datasets import ItemCatalog

            try:
                self.catalog = ItemCatalog.from_dir(root, progress=False)
            except (FileNotFoundError, ValueError) as err:
                self.reason = f"dataset not readable: {err}"
                logger.warning("report: %s; titles, covers and tags are left out", self.reason)
            else:
                self.position = {int(i): p for p, i in enumerate(self.catalog.item_ids)}
        self.root = root
        self._thumbs: dict[int, str | None] = {}

    def title(self, item: int) -> str | None:
        pos = self.position.get(item)
        return None if pos is None else self.catalog.titles[pos]

    def first_tags(self, n_rows: int) -> np.ndarray:
        tags = np.zeros(n_rows, np.int64)
        if self.catalog is not None:
            keep = self.catalog.item_ids < n_rows
            tags[self.catalog.item_ids[keep]] = self.catalog.tags[keep, 0]
        return tags

    def thumbnail(self, item: int, out: Path) -> str | None:
        """Relative src of the item's cover thumbnail, written once; None without a cover."""
        if item not in self._thumbs:
            pos = self.position.get(item)
            image = None if pos is None else self.catalog.load_image(pos)
            src = None
            if image is not None:
                src = f"thumbs/item{item}.png"
                (out / "thumbs").mkdir(exist_ok=True)
                write_thumbnail(image, out / src)
            self._thumbs[item] = src
        return self._thumbs[item]

    def provided_table(self) -> np.ndarray | None:
        if self.catalog is None:
            return None
        from ctr_eval.format import find_layout, read_item_info

        return read_item_info(find_layout(self.root).item_info, ("item_emb_d128",))["item_emb_d128"]


def _first_table(run: Any, items: DatasetItems, embedding: str) -> tuple[int, np.ndarray] | None:
    for seed in run.seeds:
        saved = run.table(embedding, seed)
        if saved is not None:
            table = saved[0] if saved[0] is not None else items.provided_table()
            return None if table is None else (seed, table)
    return None


def draw_map(run: Any, items: DatasetItems, out: Path) -> Path | None:
    """``embedding_map.png`` of the first saved seed of each embedding of ``run`` (a
    ``report.RunFolder``); None when the run saved no table."""
    panels = []
    for embedding in run.embeddings:
        found = _first_table(run, items, embedding)
        if found is None:
            continue
        seed, table = found
        flag = " (random-init encoder)" if run.untrained(embedding) else ""
        panels.append((f"{embedding}, seed {seed}{flag}", table))
    if not panels:
        return None
    rows = len(panels[0][1])
    same = [p for p in panels if len(p[1]) == rows]
    if len(same) < len(panels):
        logger.warning("report: %d table(s) left off the map: their row count differs from the "
                       "first table's %d", len(panels) - len(same), rows)
    return embedding_map(same, items.first_tags(rows), out / "embedding_map.png")


def write_thumbnail(image, path: Path, size: int = 96) -> Path:
    """Save a copy of a PIL image that fits in ``size`` x ``size`` as PNG."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    thumb.save(path, format="PNG")
    return path
