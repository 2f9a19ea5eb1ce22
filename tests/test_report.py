"""The run report: pages, images, the random-init flag, missing pieces, atomic rewrites."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _tiny_models import TINY_CLIP, tiny_clip_spec
from mmembed.cli import main
from mmembed.recipes import load_recipe, run_recipe
from mmembed.recipes import report_plots
from mmembed.recipes.report import load_run, write_report
from mmembed.recipes.results import format_summary

pytestmark = pytest.mark.usefixtures("one_thread")

EMBEDDINGS = ("provided", "random", "clip_pca")
SMALL_DIN = {"embedding_dim": 8, "attention_hidden_units": [16], "dnn_hidden_units": [32, 16], "batch_size": 512}


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory):
    """One tiny recipe run (two seeds, a random-init clip) and its report, for every test."""
    base = tmp_path_factory.mktemp("report")
    clip = tiny_clip_spec(model={**TINY_CLIP, "embed_dim": 64})  # random-init; 2 towers x 64 = 128 dims
    recipe_path = base / "tiny.yaml"
    recipe_path.write_text(textwrap.dedent(f"""
        name: tiny_report
        description: two seeds, one random-init encoder
        data: {{path: {tiny_root}}}
        seeds: [1, 2]
        encoders:
          clip: {json.dumps(clip)}
        embeddings:
          - provided
          - random
          - {{name: clip_pca, encoders: [clip], fusion: {{name: concat_pca}}}}
        models:
          - {{name: din, task1: false, settings: {json.dumps(SMALL_DIN)}, max_epochs: 1}}
        checks: [proxy, knn]
        """), encoding="utf-8")
    run_dir, cache = base / "run", base / "cache"
    records = run_recipe(load_recipe(recipe_path), run_dir, cache_dir=cache, progress=False, say=lambda _: None)
    index = write_report(run_dir)
    return {"dir": run_dir, "cache": cache, "recipe": recipe_path, "records": records, "index": index,
            "html": index.read_text(encoding="utf-8"), "md": (index.parent / "summary.md").read_text(encoding="utf-8")}


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _img_srcs(html: str) -> list[str]:
    parser = _Images()
    parser.feed(html)
    return parser.srcs


def _assert_png_has_content(path: Path) -> None:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.size and pixels.reshape(-1, 3).std(axis=0).max() > 1.0, f"{path} is one colour"


def _row(html: str, embedding: str) -> str:
    """The comparison-table row of ``embedding`` (the first table of the page)."""
    table = html.split("<h2>Comparison</h2>", 1)[1].split("</table>", 1)[0]
    rows = [r for r in table.split("<tr>") if f'<td class="name">{embedding}' in r]
    assert len(rows) == 1, (embedding, rows)
    return rows[0]


# --------------------------------------------------------------------------- the page


def test_the_report_pages_exist_and_every_image_is_a_real_png_beside_them(run):
    report = run["index"].parent
    assert run["index"] == run["dir"] / "report" / "index.html" and (report / "summary.md").is_file()
    srcs = _img_srcs(run["html"])
    for name in ("auc.png", "valid_auc_per_epoch.png", "embedding_map.png"):
        assert name in srcs
    assert any(s.startswith("thumbs/") for s in srcs)
    for src in set(srcs):
        assert not src.startswith(("/", "http:", "https:", "file:")), src  # relative: the folder travels
        assert (report / src).is_file(), src
        _assert_png_has_content(report / src)
    for name in ("auc.png", "valid_auc_per_epoch.png", "embedding_map.png"):
        assert f"]({name})" in run["md"]


def test_the_table_holds_every_embedding_with_the_runs_figures(run):
    for embedding in EMBEDDINGS:
        row = _row(run["html"], embedding)
        recs = [r for r in run["records"] if r["embedding"] == embedding]
        mean, sd = np.mean([r["valid_auc"] for r in recs]), np.std([r["valid_auc"] for r in recs], ddof=1)
        assert f"{mean:.4f} ± {sd:.4f}" in row
    table_lines = [line for line in format_summary(run["records"]).splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + len(EMBEDDINGS)
    for line in table_lines:  # the Markdown table is the run's summary table, not a copy of its logic
        assert line in run["md"]


def test_a_random_init_encoder_is_flagged_wherever_its_embedding_appears(run):
    assert all(r["untrained"] == (r["embedding"] == "clip_pca") for r in run["records"])
    assert "random-init encoder" in _row(run["html"], "clip_pca")
    for embedding in ("provided", "random"):
        assert "random-init" not in _row(run["html"], embedding)
    assert re.search(r'class="warn">.*random-init.*clip_pca \(clip\)', run["html"])
    examples = run["html"].split("<h2>Neighbour examples</h2>", 1)[1]
    assert re.search(r"<h3>clip_pca <span class=\"badge\">⚠ random-init encoder</span>", examples)
    assert "**Warning: clip_pca was made with a random-init encoder** (clip)" in run["md"]
    assert "| din (task 2) | clip_pca (random-init encoder) | 2 |" in run["md"]


def test_neighbour_examples_show_covers_and_titles_each_thumbnail_written_once(run, tiny_root):
    import pyarrow.parquet as pq

    titles = dict(zip(*pq.read_table(tiny_root / "item_feature.parquet", columns=["item_id", "item_title"])
                      .to_pydict().values()))
    examples = run["html"].split("<h2>Neighbour examples</h2>", 1)[1].split("<h2>", 1)[0]
    checks = json.loads((run["dir"] / "checks" / "clip_pca-seed1.json").read_text())
    first_neighbour = checks["knn_examples"][0][0] + 1  # row r of the table is item r + 1
    assert examples.count('<table class="nb">') == len(EMBEDDINGS)
    assert examples.count("<tr>") == len(EMBEDDINGS) * 4  # a header and three queries each
    assert f"#1 {titles[1]}" in examples and f"#{first_neighbour} {titles[first_neighbour]}" in examples
    thumbs = sorted(p.name for p in (run["index"].parent / "thumbs").iterdir())
    shown = {src for src in _img_srcs(examples)}
    assert sorted(Path(s).name for s in shown) == thumbs  # one file per item, none unused


def test_provenance_names_the_commit_the_data_and_the_versions(run):
    env = json.loads((run["dir"] / "environment.json").read_text())
    data = json.loads((run["dir"] / "data.json").read_text())
    provenance = run["html"].split("<h2>Provenance</h2>", 1)[1]
    assert data["fingerprint"] in provenance and data["root"] in provenance
    assert f"<td class=\"name\">{env['packages']['torch']}</td>" in provenance
    if env["git_commit"]:
        assert env["git_commit"] in provenance
    assert "name: tiny_report" in provenance  # the resolved recipe


# --------------------------------------------------------------------------- robustness


def _copy_run(run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run["dir"], dst, ignore=shutil.ignore_patterns("ctr", "report"))
    return dst


def test_missing_pieces_are_said_not_computed(run, tmp_path):
    copy = _copy_run(run, tmp_path)
    records = json.loads((copy / "metrics.json").read_text())
    for r in records:  # a dataset without test labels
        r.pop("test_auc"), r.pop("rare_test_auc", None), r.pop("rare_test_rows")
    (copy / "metrics.json").write_text(json.dumps(records))
    shutil.rmtree(copy / "checks")
    index = write_report(copy)
    html, md = index.read_text(encoding="utf-8"), (index.parent / "summary.md").read_text(encoding="utf-8")
    # gap closed (no oracle), test AUC, its difference to the baseline and rare AUC: columns
    # no row has a figure in, left out of both tables, which say so
    missing = "Not computed for any row: gap closed; test AUC; test vs baseline (95% CI); rare-item test AUC"
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert "test AUC" not in header and "proxy AUC" in header and missing in md
    assert "<th>test AUC</th>" not in html and "<th>proxy AUC</th>" in html and missing in html
    for embedding in EMBEDDINGS:
        assert "not computed" not in _row(html, embedding)
    # a figure missing on some rows only keeps its column, "not computed" on those rows
    for r in records:
        r["test_auc"] = 0.6 if r["embedding"] == "provided" else None
    (copy / "metrics.json").write_text(json.dumps(records))
    html = write_report(copy).read_text(encoding="utf-8")
    assert "<th>test AUC</th>" in html and '<td class="nc">not computed</td>' in _row(html, "random")
    assert html.count("not computed: the recipe ran no neighbour checks") == 2  # metrics and examples
    assert "auc.png" in _img_srcs(html) and not (copy / "report" / "thumbs").exists()

    (copy / "metrics.json").unlink()  # a run that trained nothing yet, on data that has moved
    (copy / "data.json").write_text(json.dumps({"root": str(tmp_path / "gone"), "fingerprint": "x"}))
    html = write_report(copy).read_text(encoding="utf-8")
    assert '<h2>Comparison</h2><p class="nc">not computed: the run has no CTR results' in html
    assert _img_srcs(html) == ["embedding_map.png"]  # random and clip tables still map, uncoloured
    assert not (copy / "report" / "auc.png").exists()  # the old figure went with the old page


def test_not_a_run_folder_is_refused_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no recipe.yaml; pass the folder a recipe run wrote"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nowhere: does not exist"):
        write_report(tmp_path / "nowhere")


def test_a_failed_rewrite_leaves_the_old_report_and_a_rewrite_is_the_same(run, tmp_path, monkeypatch):
    out = tmp_path / "report"
    index = write_report(run["dir"], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "stale.png").write_bytes((out / "auc.png").read_bytes())

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(report_plots, "embedding_map", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(run["dir"], out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == {**before, Path("stale.png"): before[Path("auc.png")]}  # untouched, nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # the staging folder is gone

    monkeypatch.undo()
    assert write_report(run["dir"], out) == index
    again = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert again == before  # same run, same bytes; the stale image is removed


# --------------------------------------------------------------------------- plots


def test_pca_map_matches_scikit_learn_and_samples_with_a_fixed_seed():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(0).standard_normal((200, 12)) * np.arange(1, 13)
    coords, share = report_plots.pca_2d(x)
    ref = PCA(2).fit(x)
    np.testing.assert_allclose(np.abs(coords), np.abs(ref.transform(x)), atol=1e-8)
    np.testing.assert_allclose(share, ref.explained_variance_ratio_)
    a, b = report_plots.sample_items(10_000, 300, seed=0), report_plots.sample_items(10_000, 300, seed=0)
    assert np.array_equal(a, b) and len(np.unique(a)) == 300 and a.min() >= 1 and a.max() <= 10_000
    assert np.array_equal(report_plots.sample_items(50, 300), np.arange(1, 51))


def test_plots_without_figures_to_draw_return_none(tmp_path):
    rows = [{"model": "din", "embedding": "x", "untrained": False, "records": [{"seed": 1, "valid_auc": None}]}]
    assert report_plots.auc_plot(rows, tmp_path / "a.png") is None
    assert report_plots.history_plot([{"model": "din", "embedding": "x", "history": []}], tmp_path / "h.png") is None
    assert report_plots.embedding_map([], np.zeros(5, np.int64), tmp_path / "m.png") is None
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- command line


def test_mmembed_report_and_run_print_the_report_path(run, tmp_path, capsys):
    assert main(["-q", "report", str(run["dir"]), "--out", str(tmp_path / "r")]) == 0
    assert f"report: {tmp_path / 'r' / 'index.html'}" in capsys.readouterr().out
    assert main(["-q", "report", str(tmp_path)]) == 2
    assert "mmembed report: error:" in capsys.readouterr().err
    # a rerun of the recipe computes nothing and ends with the report
    assert main(["-q", "run", str(run["recipe"]), "--out", str(run["dir"]), "--cache-dir", str(run["cache"])]) == 0
    assert f"report: {run['index']}" in capsys.readouterr().out
    started = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # the rerun's own start time
    assert started.sub("T", run["index"].read_text(encoding="utf-8")) == started.sub("T", run["html"])


def test_report_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "example:\n  mmembed report runs/demo" in capsys.readouterr().out


# --------------------------------------------------------------------------- in a browser

_PROBE = """<script>window.addEventListener('load', function () {
  var bad = Array.from(document.images).filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  var m = document.createElement('pre'); m.id = 'image-probe';
  m.textContent = 'IMAGES ' + document.images.length + ' BROKEN [' +
    bad.map(function (i) { return i.getAttribute('src'); }).join(',') + ']';
  document.body.appendChild(m);
});</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs Debian's `chromium` on PATH (apt-get install chromium) to render the page")
def test_the_page_renders_in_headless_chromium_with_every_image_loaded(run, tmp_path):
    report = tmp_path / "report"
    shutil.copytree(run["index"].parent, report)
    shot = tmp_path / "page.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", report.joinpath("index.html").as_uri())
    with Image.open(shot) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float32)
    assert grey.shape == (3000, 1400) and grey.std() > 20, "the screenshot is blank"
    assert (grey < 200).mean() > 0.05, "the screenshot is nearly all background"

    probe = report / "probe.html"
    probe.write_text(run["html"].replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'id="image-probe">IMAGES (\d+) BROKEN \[(.*?)\]<', dom)
    assert found, "the page's load handler did not run"
    assert int(found.group(1)) == len(_img_srcs(run["html"])) > 10 and found.group(2) == ""


def _records(aucs: dict[str, float], sd: float | None = None) -> list[dict]:
    """One-seed records; with ``sd``, DeLong covariances of independent AUCs of that sd."""
    records = [{"model": "din", "embedding": name, "seed": 1, "valid_auc": auc} for name, auc in aucs.items()]
    if sd is not None:
        for r in records:
            r["valid_auc_cov"] = {name: sd**2 if name == r["embedding"] else 0.0 for name in aucs}
    return records


def test_judge_notes_flag_a_judge_that_did_not_order_its_references():
    from mmembed.recipes.results import judge_notes, summary_rows

    aucs = {"provided": 0.64, "random": 0.59, "oracle": 0.75, "head": 0.70}
    assert judge_notes(summary_rows(_records(aucs, sd=0.005))) == []
    # the same means, but intervals too wide to decide random < provided
    (wide,) = judge_notes(summary_rows(_records(aucs, sd=0.02)))
    assert "provided - random = +0.0500 [" in wide and "(not decided)" in wide
    assert "oracle - random" not in wide  # 0.16 apart: decided even at this noise
    swapped = {"provided": 0.53, "random": 0.55, "oracle": 0.57, "head": 0.60}
    (note,) = judge_notes(summary_rows(_records(swapped, sd=0.002)))
    assert "provided - random = -0.0200 [" in note and "(reversed)" in note
    assert "head - oracle = +0.0300 [" in note and "(above the oracle)" in note
    assert note in format_summary(_records(swapped, sd=0.002))
    # a run that kept no valid scores: only a reversed mean is flagged
    assert judge_notes(summary_rows(_records(aucs))) == []
    (old,) = judge_notes(summary_rows(_records(swapped)))
    assert "provided - random = -0.0200 (reversed; no interval)" in old
    # without a random row there is nothing to check against; a lone model is fine
    assert judge_notes(summary_rows(_records({"provided": 0.53, "head": 0.59}, sd=0.01))) == []


def test_the_report_warns_when_the_judge_ranks_random_above_provided(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    provided = {r["seed"]: r["valid_auc"] for r in metrics if r["embedding"] == "provided"}
    warning = "did not order the reference tables (provided - random = "
    for shift, warned in ((-0.01, False), (0.01, True)):  # the same shift each seed: decided
        for r in metrics:
            if r["embedding"] == "random":
                r["valid_auc"] = provided[r["seed"]] + shift
        (copy / "metrics.json").write_text(json.dumps(metrics))
        index = write_report(copy)
        html, md = index.read_text(encoding="utf-8"), (index.parent / "summary.md").read_text(encoding="utf-8")
        # the tiny run's DIN is a free (task 2) configuration, and its rows say so
        assert (f'<p class="warn">⚠ din (task 2) {warning}' in html) == warned
        assert (f"**Warning**: din (task 2) {warning}" in md) == warned
