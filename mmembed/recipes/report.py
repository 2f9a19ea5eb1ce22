"""The report of a recipe run: ``RUN_DIR/report/index.html`` and ``summary.md``.

The page is self-contained in its folder: the figures and cover thumbnails are PNG files
beside ``index.html`` (``*.png``, ``thumbs/item<id>.png``), referenced by relative paths,
so the folder can be copied or zipped as it is. It shows the comparison table, the AUC
figures, the neighbour checks, a PCA map of each embedding and neighbour examples with
covers, and the run's provenance; an embedding made with a random-init encoder carries a
warning wherever it appears. Whatever the run did not compute (no test labels, no checks,
no CTR model, a dataset that has moved) is shown as "not computed".

A rewrite is atomic: everything is drawn into a staging folder first, so a failure leaves
the previous report as it was; the images then replace the old ones file by file and the
two pages are written last (``ctr_eval.format.atomic_path``).
"""
from __future__ import annotations

import html
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ctr_eval.format import atomic_path
from mmembed.recipes import report_plots as plots
from mmembed.recipes.results import (dropped_note, interval_note, judge_notes, spearman_note, summary_rows,
                                     summary_table)

logger = logging.getLogger(__name__)

__all__ = ["write_report", "load_run", "RunFolder"]

EXAMPLE_QUERIES = 3  # items shown per embedding in the neighbour examples
EXAMPLE_NEIGHBOURS = 5


@dataclass
class RunFolder:
    """What a run folder holds; the optional parts are empty when the run lacks them."""

    path: Path
    recipe: dict
    recipe_text: str
    environment: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # run_state.json: running / finished / failed

    @property
    def unfinished(self) -> str | None:
        """Why the run's results are incomplete, or None when it finished (or predates
        run_state.json)."""
        from mmembed.recipes.runner import run_in_progress

        state = self.state.get("state")
        if state in (None, "finished"):
            return None
        started = self.state.get("started", "an unknown time")
        if state == "running" and run_in_progress(self.path):
            return f"this run is still running (started {started}): the page shows what it has finished so far"
        why = self.state.get("error") if state == "failed" else "it was stopped"
        return (f"this run did not finish (started {started}; {why}): the page shows what it finished; "
                "`mmembed run` on the same recipe and folder resumes it")

    @property
    def embeddings(self) -> list[str]:
        return [e if isinstance(e, str) else e["name"] for e in self.recipe.get("embeddings", [])]

    @property
    def seeds(self) -> list[int]:
        return list(self.recipe.get("seeds", [])) or sorted({r["seed"] for r in self.records})

    def encoders_of(self, embedding: str) -> list[str]:
        for e in self.recipe.get("embeddings", []):
            if isinstance(e, dict) and e.get("name") == embedding:
                return list(e.get("encoders", []))
        return []

    def table(self, embedding: str, seed: int) -> tuple[np.ndarray | None, dict] | None:
        """(table, info) saved by the runner; table None = the dataset's own. None if missing."""
        path = self.path / "tables" / f"{embedding}-seed{seed}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as saved:
            table = saved["table"] if saved["table"].size else None
            return table, json.loads(str(saved["info"]))

    def checks(self, embedding: str, seed: int) -> dict | None:
        path = self.path / "checks" / f"{embedding}-seed{seed}.json"
        return _read_json(path, None)

    def table_info(self, embedding: str, seed: int) -> dict | None:
        path = self.path / "tables" / f"{embedding}-seed{seed}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as saved:  # reads the info member only
            return json.loads(str(saved["info"]))

    def untrained(self, embedding: str) -> bool:
        """Whether any encoder behind ``embedding`` ran with random (untrained) weights."""
        if any(r.get("untrained") for r in self.records if r["embedding"] == embedding):
            return True
        return any((self.table_info(embedding, seed) or {}).get("untrained") for seed in self.seeds)


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun the recipe to rewrite it") from err


def load_run(run_dir: str | os.PathLike) -> RunFolder:
    """Read a run folder written by ``mmembed run`` (only ``recipe.yaml`` is required)."""
    path = Path(run_dir)
    recipe_path = path / "recipe.yaml"
    if not recipe_path.is_file():
        what = "does not exist" if not path.exists() else "holds no recipe.yaml"
        raise FileNotFoundError(f"{path}: {what}; pass the folder a recipe run wrote "
                                "(`mmembed run RECIPE --out RUN_DIR`)")
    text = recipe_path.read_text(encoding="utf-8")
    recipe = yaml.safe_load(text) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{recipe_path}: expected a mapping, got {type(recipe).__name__}")
    records = _read_json(path / "metrics.json", [])
    if not isinstance(records, list):
        raise ValueError(f"{path / 'metrics.json'}: expected a list of records, got {type(records).__name__}")
    return RunFolder(path, recipe, text, _read_json(path / "environment.json", {}),
                     _read_json(path / "data.json", {}), records, _read_json(path / "run_state.json", {}))


# --------------------------------------------------------------------------- pieces of the page


def _neighbour_examples(run: RunFolder, items: plots.DatasetItems, out: Path) -> list[dict]:
    """Per embedding (first seed with checks): queries with their top neighbours."""
    examples = []
    for embedding in run.embeddings:
        for seed in run.seeds:
            rows = (run.checks(embedding, seed) or {}).get("knn_examples")
            if rows:
                break
        else:
            continue
        queries = []
        for r, neighbour_rows in enumerate(rows[:EXAMPLE_QUERIES]):
            ids = [r + 1] + [int(n) + 1 for n in neighbour_rows[:EXAMPLE_NEIGHBOURS]]  # row r = item r + 1
            queries.append([{"item": i, "title": items.title(i), "src": items.thumbnail(i, out)} for i in ids])
        examples.append({"embedding": embedding, "seed": seed, "untrained": run.untrained(embedding),
                         "queries": queries})
    return examples


def _knn_rows(run: RunFolder) -> list[dict]:
    """Neighbour metrics per embedding, averaged over the seeds that have them, with the
    random-table floor."""
    out = []
    for embedding in run.embeddings:
        found = [c for c in (run.checks(embedding, s) for s in run.seeds) if c and c.get("knn")]
        if not found:
            continue
        metrics = {k: (_mean([c["knn"].get(k) for c in found]), _mean([c.get("knn_floor", {}).get(k) for c in found]))
                   for k in _KNN_KEYS}
        out.append({"embedding": embedding, "untrained": run.untrained(embedding), "seeds": len(found),
                    "metrics": metrics})
    return out


_KNN_KEYS = ("tag_overlap", "coclick_hit", "truth_overlap", "effective_rank", "near_duplicate_share")


def _code_rows(run: RunFolder) -> list[list[str]]:
    """Semantic-ID diagnostics of each table that has codes, seed by seed (each seed's
    table has its own): levels x codes, codebook use per level, collision rate,
    reconstruction error."""
    out = []
    for embedding in run.embeddings:
        for seed in run.seeds:
            d = (run.table_info(embedding, seed) or {}).get("codes")
            if d:
                out.append([embedding, str(seed), f"{d['levels']} x {d['codes']}" + (" balanced" if d.get("balanced") else ""),
                            ", ".join(f"{u:.0%}" for u in d["codebook_usage"]), f"{d['collision_rate']:.1%}",
                            "an extra level numbers them" if d.get("unique_ids") else "left (shared code rows)",
                            f"{d['reconstruction_error']:.3f}"])
    return out


_CODES_HEADER = ("embedding", "seed", "levels x codes", "codebook use per level", "items in collisions",
                 "collisions", "relative reconstruction error")
_CODES_NOTE = ("Semantic IDs (residual quantization): items sharing every level's code collide; left, they "
               "share those code embeddings; with unique_ids an extra level numbers them.")


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------- the pages

NOT_COMPUTED = "not computed"
_KNN_HEADER = ("embedding", "seeds", "tag overlap@10", "co-click hit@10", "truth overlap@10",
               "effective rank", "near-duplicate share")
_FIGURES = (("auc", ("AUC per strategy (mean ± sd over seeds; dots: single seeds; hollow squares: "
                     "random-init encoders)")), ("history", "Validation AUC per epoch"))
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1340px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.4em 0 1.2em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f0f0;text-align:center}td.name{text-align:left}.nc{color:#999;font-style:italic}
.grid{display:flex;flex-wrap:wrap;gap:0 2em}
.warn{background:#fff3cd;border:1px solid #d9a400;padding:.5em 1em;border-radius:4px}
.badge{background:#c9302c;color:#fff;border-radius:3px;padding:0 5px;font-size:11px;white-space:nowrap}
img.plot{max-width:100%;border:1px solid #ddd}
table.nb td{vertical-align:top;text-align:center;width:86px;font-size:11px;white-space:normal}
table.nb td.query{background:#eef5ff}table.nb img{width:80px;height:80px;object-fit:cover}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:12px}"""
_BADGE = '<span class="badge">⚠ random-init encoder</span>'


def _e(value: Any) -> str:
    return html.escape(str(value))


def _cell(text: str, name: bool = False) -> str:
    if text in ("-", "", None):
        return f'<td class="nc">{NOT_COMPUTED}</td>'
    return f'<td class="name">{text}</td>' if name else f"<td>{_e(text)}</td>"


def _table(header: Sequence[str], body: list[str], klass: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f'<table class="{klass}"><tr>{head}</tr>{"".join(body)}</table>'


def _name(embedding: str, untrained: bool) -> str:
    return _e(embedding) + (" " + _BADGE if untrained else "")


def _metric(pair: tuple[float | None, float | None], key: str) -> str:
    value, floor = pair
    if value is None:
        return "-"
    fmt = "{:.1f}" if key == "effective_rank" else "{:.3f}"
    return fmt.format(value) + ("" if floor is None else f" (random {fmt.format(floor)})")


def _knn_cells(row: dict) -> list[str]:
    return [str(row["seeds"])] + [_metric(row["metrics"][k], k) for k in _KNN_KEYS]


def _html_comparison(content: dict) -> str:
    if not content["rows"]:
        return f'<p class="nc">{NOT_COMPUTED}: the run has no CTR results (metrics.json is missing or empty)</p>'
    header, table, dropped = summary_table(content["rows"], flag_untrained=False)
    body = []
    for row, cells in zip(content["rows"], table):
        body.append("<tr>" + _cell(_e(cells[0]), True) + _cell(_name(row["embedding"], row["untrained"]), True)
                    + "".join(_cell(c) for c in cells[2:]) + "</tr>")
    notes = [n for n in (interval_note(content["rows"]), spearman_note(content["rows"]), dropped_note(dropped)) if n]
    warnings = "".join(f'<p class="warn">⚠ {_e(w)}.</p>' for w in judge_notes(content["rows"]))
    return _table(header, body) + warnings + "".join(f"<p>{_e(n)}.</p>" for n in notes)


def _no_checks(content: dict) -> str:
    """Why a run folder holds no neighbour checks."""
    run = content["run"]
    if "knn" in run.recipe.get("checks", ["knn"]) and run.unfinished:
        return "the run did not finish them"
    return "the recipe ran no neighbour checks"


def _html_knn(content: dict) -> str:
    if not content["knn"]:
        return f'<p class="nc">{NOT_COMPUTED}: {_no_checks(content)}</p>'
    body = ["<tr>" + _cell(_name(r["embedding"], r["untrained"]), True)
            + "".join(_cell(c) for c in _knn_cells(r)) + "</tr>" for r in content["knn"]]
    return ("<p>Top-10 cosine neighbours of every item; in brackets the same figure for a random "
            "table of the same shape.</p>" + _table(_KNN_HEADER, body))


def _html_codes(content: dict) -> str:
    if not content["codes"]:
        return ""
    body = ["<tr>" + _cell(_e(r[0]), True) + "".join(_cell(_e(c)) for c in r[1:]) + "</tr>" for r in content["codes"]]
    return f"<h2>Semantic IDs</h2><p>{_e(_CODES_NOTE)}</p>" + _table(_CODES_HEADER, body)


def _html_item(item: dict, query: bool) -> str:
    image = (f'<img src="{_e(item["src"])}" alt="cover of item {item["item"]}">' if item["src"]
             else '<div class="nc">no cover</div>')
    title = _e(item["title"]) if item["title"] is not None else '<span class="nc">no title</span>'
    return f'<td class="{"query" if query else ""}">{image}<br>#{item["item"]} {title}</td>'


def _html_examples(content: dict) -> str:
    if not content["examples"]:
        return f'<p class="nc">{NOT_COMPUTED}: {_no_checks(content)}</p>'
    note = f'<p class="nc">{_e(content["items_note"])}</p>' if content["items_note"] else ""
    parts = []
    for ex in content["examples"]:
        rows = ["<tr>" + "".join(_html_item(it, i == 0) for i, it in enumerate(q)) + "</tr>" for q in ex["queries"]]
        header = ("query",) + tuple(f"neighbour {i}" for i in range(1, len(ex["queries"][0])))
        parts.append(f"<div><h3>{_name(ex['embedding'], ex['untrained'])} <small>(seed {ex['seed']})</small></h3>"
                     + _table(header, rows, "nb") + "</div>")
    return ("<p>Items 1 to 3 (shaded) and their nearest neighbours by cosine, "
            f'best first.</p>{note}<div class="grid">' + "".join(parts) + "</div>")


def _html_figure(src: str | None, caption: str) -> str:
    if src is None:
        return f'<h3>{_e(caption)}</h3><p class="nc">{NOT_COMPUTED}</p>'
    return f'<h3>{_e(caption)}</h3><img class="plot" src="{_e(src)}" alt="{_e(caption)}">'


def _html_provenance(run: RunFolder) -> str:
    env, data = run.environment, run.data
    facts = [("run folder", run.path.resolve()), ("recipe source", env.get("recipe_source")),
             ("started", env.get("started")), ("git commit", env.get("git_commit")),
             ("python", env.get("python")), ("data", data.get("root")),
             ("data fingerprint", data.get("fingerprint"))]
    facts += sorted(env.get("packages", {}).items())
    body = ["<tr>" + _cell(_e(k), True) + _cell("-" if v is None else _e(v), True) + "</tr>" for k, v in facts]
    return (_table(("what", "value"), body)
            + f"<details open><summary>recipe.yaml (resolved)</summary><pre>{_e(run.recipe_text)}</pre></details>")


def _warning(content: dict) -> str:
    run = content["run"]
    unfinished = f'<p class="warn">⚠ {_e(run.unfinished[0].upper() + run.unfinished[1:])}.</p>' \
        if run.unfinished else ""
    if not content["untrained"]:
        return unfinished
    names = ", ".join(f"{e} ({', '.join(run.encoders_of(e)) or 'encoders unknown'})" for e in content["untrained"])
    return unfinished + (f'<p class="warn">⚠ Made with a <b>random-init</b> (untrained) encoder: {_e(names)}. '
                         "Their figures test the plumbing, not what a trained model would give.</p>")


def render_html(content: dict) -> str:
    run = content["run"]
    name = run.recipe.get("name", run.path.name)
    figures = "".join(_html_figure(content["figures"][k], caption) for k, caption in _FIGURES)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(name)}: run report</title>'
            f"<style>{_CSS}</style></head><body><h1>Run report: {_e(name)}</h1>"
            f"<p>{_e(run.recipe.get('description') or '')}</p>{_warning(content)}"
            f"<h2>Comparison</h2>{_html_comparison(content)}{figures}"
            f"<h2>Neighbour checks</h2>{_html_knn(content)}{_html_codes(content)}"
            f"<h2>Map of the item embeddings</h2><p>PCA of up to {plots.MAP_ITEMS} items (sampled with a fixed "
            "seed), first seed of each embedding, coloured by each item's first tag.</p>"
            f"{_html_figure(content['figures']['map'], 'Embedding map')}"
            f"<h2>Neighbour examples</h2>{_html_examples(content)}"
            f"<h2>Provenance</h2>{_html_provenance(run)}</body></html>\n")


def _md_table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def _md_name(embedding: str, untrained: bool) -> str:
    return embedding + (" (random-init encoder)" if untrained else "")


def _md_tables(content: dict) -> list[str]:
    lines = []
    if content["rows"]:
        header, table, dropped = summary_table(content["rows"])
        lines += _md_table(header, table)
        notes = [n for n in (interval_note(content["rows"]), spearman_note(content["rows"]),
                             dropped_note(dropped)) if n]
        lines += ["", f"`-`: {NOT_COMPUTED}." + "".join(f" {n}." for n in notes)]
        lines += [line for warning in judge_notes(content["rows"]) for line in ("", f"**Warning**: {warning}.")]
    else:
        lines.append(f"Comparison table: {NOT_COMPUTED} (no CTR results).")
    lines += ["", "## Neighbour checks", ""]
    if content["knn"]:
        knn = [[_md_name(r["embedding"], r["untrained"])] + _knn_cells(r) for r in content["knn"]]
        lines += ["Top-10 cosine neighbours; in brackets a random table's figure.", ""] + _md_table(_KNN_HEADER, knn)
    else:
        lines.append(f"{NOT_COMPUTED}: {_no_checks(content)}.")
    if content["codes"]:
        lines += ["", "## Semantic IDs", "", _CODES_NOTE, ""] + _md_table(_CODES_HEADER, content["codes"])
    return lines


def render_markdown(content: dict) -> str:
    run, env, data = content["run"], content["run"].environment, content["run"].data
    lines = [f"# {run.recipe.get('name', run.path.name)}: run report", ""]
    if run.unfinished:
        lines += [f"**Warning: {run.unfinished}.**", ""]
    for e in content["untrained"]:
        lines += [(f"**Warning: {e} was made with a random-init encoder** ({', '.join(run.encoders_of(e))}): "
                   "untrained weights, its figures test the plumbing only."), ""]
    lines += _md_tables(content) + ["", "## Figures", ""]
    for key, caption in (*_FIGURES, ("map", "Embedding map (PCA, coloured by first tag)")):
        src = content["figures"][key]
        lines += [f"![{caption}]({src})" if src else f"{caption}: {NOT_COMPUTED}.", ""]
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
    lines += ["## Provenance", "", f"- git commit: {env.get('git_commit') or 'not recorded'}",
              f"- data: {data.get('root') or 'not recorded'} (fingerprint {data.get('fingerprint') or 'not recorded'})",
              f"- packages: {packages or 'not recorded'}", "",
              "Neighbour examples with covers and the full recipe: [index.html](index.html)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing


def _draw(run: RunFolder, stage: Path) -> dict:
    """Every figure and thumbnail into ``stage``; the content of the two pages."""
    rows = summary_rows(run.records)
    items = plots.DatasetItems(run.data.get("root"))
    figures = {"auc": plots.auc_plot(rows, stage / "auc.png"),
               "history": plots.history_plot(run.records, stage / "valid_auc_per_epoch.png"),
               "map": plots.draw_map(run, items, stage)}
    return {"run": run, "rows": rows, "figures": {k: v.name if v else None for k, v in figures.items()},
            "knn": _knn_rows(run), "codes": _code_rows(run), "examples": _neighbour_examples(run, items, stage),
            "untrained": [e for e in run.embeddings if run.untrained(e)],
            "items_note": None if items.catalog is not None else items.reason}


def _publish(stage: Path, out: Path, pages: dict[str, str]) -> None:
    """Move the staged images into ``out``, write the pages last, drop stale images."""
    out.mkdir(parents=True, exist_ok=True)
    made = {p.relative_to(stage) for p in stage.rglob("*.png")}
    for rel in sorted(made):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, out / rel)
    for name, text in pages.items():
        with atomic_path(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    for old in out.rglob("*.png"):
        if old.relative_to(out) not in made:
            old.unlink()


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``index.html``, ``summary.md`` and their images into ``out_dir`` (default
    ``RUN_DIR/report``); return the path of ``index.html``."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
    try:
        content = _draw(run, stage)
        pages = {"index.html": render_html(content), "summary.md": render_markdown(content)}
        _publish(stage, out, pages)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    logger.debug("report: %s", out / "index.html")  # the commands print the path
    return out / "index.html"
