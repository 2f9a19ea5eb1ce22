"""The `mmembed` command from the shell, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
from _parquet_edit import set_values


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmembed.cli", "-q", *args],
                          capture_output=True, text=True, timeout=300)


def test_validate_good_directory_exits_zero(tiny_root):
    result = run_cli("validate", str(tiny_root))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout.splitlines()[0]


def test_validate_bad_directory_names_file_column_and_rows(tiny_copy):
    set_values(tiny_copy / "MicroLens_1M_x1" / "valid.parquet", "label", [3, 5], 2)

    result = run_cli("validate", str(tiny_copy))
    assert result.returncode == 1
    assert "valid.parquet" in result.stdout
    assert "label" in result.stdout
    assert "2 rows break this: row 3 (found 2), row 5 (found 2)" in result.stdout


def test_validate_missing_directory_is_one_clear_line(tmp_path):
    result = run_cli("validate", str(tmp_path / "nowhere"))
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    assert "not found" in (result.stdout + result.stderr)


def test_summary_reports_rows_of_each_split(tiny_root):
    result = run_cli("summary", str(tiny_root))
    assert result.returncode == 0, result.stderr
    rows = pq.read_metadata(tiny_root / "MicroLens_1M_x1" / "train.parquet").num_rows
    assert f"{rows:,}" in result.stdout


def test_extract_writes_a_valid_item_info(tiny_root, tmp_path):
    out = tmp_path / "item_info.parquet"
    result = run_cli("extract", str(tiny_root), "--encoder", "sbert", "--item-info", str(out),
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    n_items = pq.read_metadata(tiny_root / "item_feature.parquet").num_rows
    assert table.num_rows == n_items + 1
    assert len(table.column("item_emb_d128")[1].as_py()) == 128
    assert set(table.column("item_emb_d128")[0].as_py()) == {0.0}


def test_extract_checkpoints_a_trained_heads_fit_and_clears_it_when_done(tiny_root, tmp_path):
    out = tmp_path / "emb"
    spec = '{"name": "contrastive", "max_steps": 20, "eval_every": 10, "batch_size": 256}'
    result = run_cli("extract", str(tiny_root), "--encoder", "sbert", "--fusion", spec, "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert not (out / "fit_checkpoint").exists()  # outputs written: the checkpoint is gone
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["fusion"]["params"]["checkpoint_dir"] == str(out / "fit_checkpoint")


def test_extract_refuses_item_info_of_the_wrong_width_before_work(tiny_root, tmp_path):
    result = run_cli("extract", str(tiny_root), "--encoder", "sbert", "--dim", "16",
                     "--item-info", str(tmp_path / "x.parquet"), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 2
    assert "128-d" in result.stderr and "--dim 16" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_extracted_item_info_trains_the_fixed_din(tiny_root, tmp_path):
    import ctr_eval

    out = tmp_path / "item_info.parquet"
    result = run_cli("extract", str(tiny_root), "--encoder", "sbert", "--item-info", str(out),
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    scored = ctr_eval.evaluate(tiny_root, item_info=out, max_epochs=1, batch_size=512,
                               progress=False, run_dir=tmp_path / "run")
    assert 0.0 <= scored["valid_auc"] <= 1.0 and scored["epochs_run"] == 1
    assert str(out) in scored["embedding_source"]


# -- in-process: main(argv), its exit status and its one-line errors ---------------------------
import errno  # noqa: E402

import pytest  # noqa: E402

from mmembed.cli import main  # noqa: E402


def fast_encoders(root) -> list[str]:
    """Two 128-d encoders reading the dataset's stored vectors: no model, well under a second."""
    spec = f"precomputed:path={root}/item_emb.parquet,column=item_emb_d128_v"
    return ["--encoder", spec + "1", "--encoder", spec + "2"]


@pytest.fixture
def encode_calls(monkeypatch) -> list[str]:
    from mmembed.encoders.base import Encoder

    calls, real = [], Encoder.encode

    def counted(self, *args, **kwargs):
        calls.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", counted)
    return calls


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"mmembed {command}: error: "), err
    return err


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_synth_into_a_non_empty_folder_names_the_overwrite_flag(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["-q", "synth", "--scale", "tiny", "--out", str(out)]) == 2
    line = error_line(capsys, "synth")
    assert f"--out {out} is not empty; pass --overwrite" in line and "overwrite=True" not in line
    assert files_under(out) == ["notes.txt"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_adds_the_traceback(tmp_path, capsys, where):
    (tmp_path / "x").write_text("")
    argv = ["synth", "--scale", "tiny", "--out", str(tmp_path)]
    assert main(["-v", *argv] if where == "before" else [*argv, "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("mmembed synth: error: --out")


def test_demo_runs_the_shipped_recipe_with_quick_and_set_overrides(tmp_path, capsys, monkeypatch):
    import mmembed.recipes.cli as recipes_cli

    ran = {}

    def fake_run(recipe, run_dir, cache_dir=None, progress=True):
        ran.update(recipe=recipe, run_dir=run_dir, progress=progress)
        return []

    monkeypatch.setattr(recipes_cli, "run_and_report", fake_run)
    assert main(["-q", "demo", "--quick", "--out", str(tmp_path / "d"), "--set", "seeds=[2]"]) == 0
    recipe = ran["recipe"]
    assert recipe.name == "demo" and recipe.data.synthetic == "tiny" and recipe.seeds == (2,)
    assert recipe.models[0].max_epochs == 1 and ran["run_dir"] == tmp_path / "d"
    assert ran["progress"] is False and "demo finished in" in capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert ran["recipe"].data.synthetic == "demo" and ran["run_dir"] == tmp_path / "d"
    names = [e.name for e in ran["recipe"].embeddings]
    assert {"provided", "random", "oracle", "concat_pca", "contrastive"} <= set(names)


def test_demo_without_its_recipe_file_says_what_to_run(tmp_path, capsys, monkeypatch):
    import mmembed.demo

    monkeypatch.setattr(mmembed.demo, "DEMO_RECIPE", tmp_path / "recipes" / "demo.yaml")
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    line = error_line(capsys, "demo")
    assert "demo.yaml is not here" in line and "mmembed run PATH/TO/demo.yaml" in line
    monkeypatch.undo()
    assert main(["demo", "--out", str(tmp_path / "d"), "--set", "nonsense=1"]) == 2  # before any work
    assert "nonsense" in error_line(capsys, "demo") and not (tmp_path / "d").exists()


def _small_item_info(path):
    import numpy as np

    from mmembed.api import write_item_info

    return write_item_info(path, np.array([1, 2, 3]), np.ones((3, 128), np.float32), None)


NO_ITEM_INFO = "(without --item-info)"
BAD_EXTRACT_ARGS = [
    (["--like", "{tmp}/missing.parquet"], r"--like \S+missing\.parquet: not found; expected an item_info\.parquet"),
    (["--like", "{small}"], r"--like \S+small\.parquet: \S+small\.parquet has 4 rows but these embeddings have 600 items"),
    (["--dim", "16"], r"--item-info writes the challenge's 128-d item_emb_d128; got --dim 16"),
    (["--fusion", "none"], r"--item-info writes .* but --fusion none gives 256 dims; use --dim 128"),
    (["--fusion", "none", "--dim", "16", NO_ITEM_INFO], r"--fusion none keeps the encoders' features as they are \(256 dims .* but --dim is 16"),
    (["--fusion", "pca"], r"--fusion pca: unknown fusion head 'pca'"),
    (["--fusion", "concat_pca:dim=16", "--dim", "32", NO_ITEM_INFO], r"--fusion concat_pca:dim=16 sets dim=16 but --dim is 32"),
    (["--dim", "300", NO_ITEM_INFO], r"--dim 300: concat_pca: dim=300 exceeds .*choose dim <= 256"),
    (["--encoder", "sbrt"], r"--encoder sbrt: unknown encoder 'sbrt'"),
    (["--item-info", "{tmp}"], r"--item-info \S+ is a folder; give the file to write"),
    (["--out", "{small}"], r"--out \S+small\.parquet exists and is not a folder"),
]


@pytest.mark.parametrize("extra, message", BAD_EXTRACT_ARGS, ids=[" ".join(a) for a, _ in BAD_EXTRACT_ARGS])
def test_extract_checks_every_argument_before_any_encoding(tiny_root, tmp_path, capsys, encode_calls, extra, message):
    import re

    small = _small_item_info(tmp_path / "small.parquet")
    out, item_info, cache = tmp_path / "out", tmp_path / "item_info.parquet", tmp_path / "cache"
    with_item_info = [] if NO_ITEM_INFO in extra else ["--item-info", str(item_info)]
    extra = [a.format(tmp=tmp_path, small=small) for a in extra if a != NO_ITEM_INFO]
    argv = ["-q", "extract", str(tiny_root), *fast_encoders(tiny_root), "--out", str(out),
            "--cache-dir", str(cache), *with_item_info, *extra]
    assert main(argv) == 2
    assert re.search(message, error_line(capsys, "extract"))
    assert encode_calls == [] and not cache.exists()
    assert not out.exists() and not item_info.exists()


def test_extract_checks_the_datasets_own_item_info_used_for_tags(tiny_copy, tmp_path, capsys, encode_calls):
    _small_item_info(tiny_copy / "MicroLens_1M_x1" / "item_info.parquet")
    argv = ["-q", "extract", str(tiny_copy), *fast_encoders(tiny_copy),
            "--item-info", str(tmp_path / "item_info.parquet"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    line = error_line(capsys, "extract")
    assert "item_tags come from the dataset's own item_info.parquet (--like takes them elsewhere)" in line
    assert "has 4 rows but these embeddings have 600 items" in line and encode_calls == []


def test_a_bad_dim_is_refused_by_the_parser(tiny_root, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["extract", str(tiny_root), "--dim", "0"])
    assert exited.value.code == 2
    assert "argument --dim: must be a positive integer, got '0'" in capsys.readouterr().err


def test_extract_writes_all_outputs_together(tiny_root, tmp_path, capsys, encode_calls):
    out, item_info = tmp_path / "out", tmp_path / "info" / "item_info.parquet"
    argv = ["-q", "extract", str(tiny_root), *fast_encoders(tiny_root), "--out", str(out),
            "--item-info", str(item_info), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "600 items -> 128 dims" in stdout and f"wrote {item_info}" in stdout
    assert files_under(out) == ["embeddings.npz", "provenance.json"]
    assert files_under(item_info.parent) == ["item_info.parquet"]  # no staged leftovers
    assert pq.read_table(item_info).num_rows == 601 and encode_calls == ["precomputed"] * 2


def test_an_item_info_failing_after_encoding_leaves_no_output(tiny_root, tmp_path, capsys, encode_calls, monkeypatch):
    import mmembed.api

    def not_finite(path, *args, **kwargs):
        raise ValueError(f"cannot write {path}: vectors of item ids [7] are not finite")

    monkeypatch.setattr(mmembed.api, "write_item_info", not_finite)
    out, item_info = tmp_path / "out", tmp_path / "item_info.parquet"
    argv = ["-q", "extract", str(tiny_root), *fast_encoders(tiny_root), "--out", str(out),
            "--item-info", str(item_info), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    assert "vectors of item ids [7] are not finite" in error_line(capsys, "extract")
    assert encode_calls and files_under(out) == [] and not item_info.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_a_full_disk_while_saving_leaves_no_output(tiny_root, tmp_path, capsys, monkeypatch):
    from mmembed.api import ItemEmbeddings

    def no_space(self, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ItemEmbeddings, "save", no_space)
    out, item_info = tmp_path / "out", tmp_path / "item_info.parquet"
    argv = ["-q", "extract", str(tiny_root), *fast_encoders(tiny_root), "--out", str(out),
            "--item-info", str(item_info), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 1
    line = error_line(capsys, "extract")
    assert line.endswith(f"cannot write {out}: No space left on device; nothing was written")
    assert files_under(out) == [] and not item_info.exists()


def test_a_full_cache_disk_is_one_line_naming_the_file(tiny_root, tmp_path, capsys, monkeypatch):
    import mmembed.cache

    def no_space(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mmembed.cache, "_write_shard", no_space)
    cache = tmp_path / "cache"
    argv = ["-q", "extract", str(tiny_root), *fast_encoders(tiny_root), "--out", str(tmp_path / "out"),
            "--cache-dir", str(cache)]
    assert main(argv) == 1
    line = error_line(capsys, "extract")
    shard = next(cache.glob("precomputed-*")) / "shard-000000000-000000600.npz"
    assert f"cannot write feature cache file {shard}: No space left on device; free space there or pass another --cache-dir" in line
    assert not (tmp_path / "out").exists()


def test_missing_clip_weights_name_the_offline_random_init_flag(tiny_root, tmp_path, capsys, monkeypatch):
    from mmembed.api import parse_spec
    from mmembed.demo import OFFLINE_CLIP
    from mmembed.encoders import create_encoder, get_encoder
    from mmembed.weights import WeightsNotAvailable

    def not_cached(self):
        raise WeightsNotAvailable("weights for ViT-B-32 pretrained=laion2b_s34b_b79k are not available: "
                                  "not in the Hugging Face cache; download that file anywhere and pass its path instead")

    monkeypatch.setattr(get_encoder("clip"), "_resolve_weights", not_cached)
    assert main(["-q", "extract", str(tiny_root), "--out", str(tmp_path / "out")]) == 2
    line = error_line(capsys, "extract")
    assert line.startswith("mmembed extract: error: default encoder clip (no --encoder given): weights for ViT-B-32")
    assert "pass its path as --encoder clip:pretrained=/path/to/file" in line
    hint = "--encoder clip:model=ViT-S-32,towers=image,pretrained=None"
    assert line.endswith(hint) and "RANDOM-INIT" in line
    monkeypatch.undo()
    spec = parse_spec(hint.split()[1])
    assert spec == OFFLINE_CLIP and create_encoder(spec).is_random_init  # builds offline


def test_missing_hub_weights_name_the_encoder_flag(tiny_root, capsys):
    assert main(["-q", "extract", str(tiny_root), "--encoder", "sbert:model=nobody/not-a-cached-model"]) == 2
    line = error_line(capsys, "extract")
    assert "pass --encoder sbert:model=local-dir:/path/to/folder" in line and "model='local-dir" not in line


def test_cli_logging_keeps_third_party_info_and_optionally_our_info_off_the_console(capsys):
    import logging

    from ctr_eval.logs import HANDLER_NAME, configure_cli_logging

    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in ("mmembed", "ctr_eval")})
    try:
        configure_cli_logging(logging.INFO)
        logging.getLogger("mmembed.demo").info("ours at info")
        logging.info("open_clip style root info")
        logging.getLogger("some_library").info("library info")
        logging.getLogger("some_library").warning("library warning")
        err = capsys.readouterr().err
        assert "ours at info" in err and "library warning" in err
        assert "root info" not in err and "library info" not in err
        configure_cli_logging(logging.INFO, console_level=logging.WARNING)  # replaces the handler
        assert sum(h.get_name() == HANDLER_NAME for h in root.handlers) == 1
        logging.getLogger("ctr_eval.train").info("epoch line")
        logging.getLogger("ctr_eval.train").warning("a warning")
        err = capsys.readouterr().err
        assert "epoch line" not in err and "a warning" in err
        assert logging.getLogger("ctr_eval").isEnabledFor(logging.INFO)  # still recorded for log files
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("command", ["demo", "run", "report", "knn", "extract", "synth", "validate", "summary",
                                     "encoders", "fusions"])
def test_every_command_help_ends_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"mmembed {command}" in out.split("example:")[1]
