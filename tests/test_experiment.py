"""The experiment runner: a grid of variants x backbones x seeds x protocols, resumable, with a report."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import yaml

from mmseqrec.evaluate.metrics import case_values
from mmseqrec.experiment import load_grid, run_grid, write_report

torch = pytest.importorskip("torch")


def test_case_values_hand_computed():
    ranks = np.array([0, 1, 4, 10])
    assert case_values("HR@5", ranks).tolist() == [1, 1, 1, 0]
    np.testing.assert_allclose(case_values("NDCG@5", ranks), [1.0, 1 / np.log2(3), 1 / np.log2(6), 0.0])
    np.testing.assert_allclose(case_values("MRR@2", ranks), [1.0, 0.5, 0.0, 0.0])


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    from helpers import write_cycle_dataset

    root = tmp_path_factory.mktemp("exp")
    data = write_cycle_dataset(root / "ds", n_users=120, n_items=30, seq_len=12)
    grid = {
        "name": "tiny",
        "datasets": {"cycle": str(data)},
        "backbones": ["sasrec", "gru4rec"],
        "seeds": [1, 2],
        "protocols": ["full", "sampled:5"],
        "metrics": ["HR@5", "NDCG@5"],
        "baseline": "ID-small",
        "base": {"train": {"epochs": 3, "batch_size": 32, "max_len": 10, "patience": 0, "progress": False},
                 "objective": {"name": "ce"}, "eval": {"ks": [1, 5, 10]}},
        "variants": {"ID-small": {"item_encoder": {"name": "id", "dim": 8}},
                     "ID-large": {"item_encoder": {"name": "id", "dim": 32}}},
        "variant_backbones": {"ID-large": ["sasrec"]},
    }
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_grid_runs_resumes_and_reports(grid_file, tmp_path, capsys):
    torch.set_num_threads(1)
    grid = load_grid(grid_file)
    out = tmp_path / "out"
    runs = run_grid(grid, out, progress=False)
    # without progress bars there is still one line per run with its result, and one per re-scored protocol
    err = capsys.readouterr().err
    done = [line for line in err.splitlines() if ": test HR@5 " in line and "best epoch" in line]
    assert len(done) == 6 and all(line.rstrip().endswith(" s") for line in done)
    assert "[6/6] cycle / ID-small / gru4rec / seed 2: sampled:5: test HR@5 " in err and "6 run(s) in " in err
    # 2 backbones x 2 seeds for the baseline, 1 backbone x 2 seeds for the restricted variant
    assert len(runs) == 6
    for r in runs:
        m = json.loads((r.run_dir / "metrics.json").read_text())
        assert m["protocol"] == "full"
        e = json.loads((r.run_dir / "eval-sampled-5.json").read_text())
        assert e["protocol"].startswith("sampled:5")
        assert (r.run_dir / "ranks-sampled-5.parquet").exists()
    # resumable: a second call trains nothing (metrics.json untouched)
    stamp = {r.run_dir: (r.run_dir / "metrics.json").stat().st_mtime_ns for r in runs}
    run_grid(grid, out, progress=False)
    assert all((r.run_dir / "metrics.json").stat().st_mtime_ns == stamp[r.run_dir] for r in runs)

    paths = write_report(grid, out)
    md = paths["markdown"].read_text()
    assert "protocol `full`" in md and "protocol `sampled:5" in md
    assert "ID-large" in md and "p HR@5 (raw / Holm)" in md  # p-values against the baseline, raw and adjusted
    large = [ln for ln in md.splitlines() if "| ID-large |" in ln]
    assert large and all(" / " in cell for ln in large for cell in ln.split("|")[4::2] if cell.strip())
    csv = pl.read_csv(paths["csv"])
    row = csv.filter((pl.col("variant") == "ID-small") & (pl.col("backbone") == "sasrec")
                     & (pl.col("protocol") == "full") & (pl.col("metric") == "HR@5"))
    vals = [json.loads((r.run_dir / "metrics.json").read_text())["test"]["HR@5"]
            for r in runs if r.variant == "ID-small" and r.backbone == "sasrec"]
    assert row["mean"][0] == pytest.approx(np.mean(vals))
    assert row["std"][0] == pytest.approx(np.std(vals, ddof=1))
    assert row["n_seeds"][0] == 2
    assert len(paths["plots"]) == 2 * 2  # 2 protocols x 2 metrics, one dataset
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["plots"])

    # the same runs reported on validation (for choosing defaults): validation means, no test, no p-values
    vgrid = load_grid(grid_file, ["report_split=valid"])
    vpaths = write_report(vgrid, out)
    vmd = vpaths["markdown"].read_text()
    assert "**Validation** metrics" in vmd and "raw /" not in vmd
    vrow = pl.read_csv(vpaths["csv"]).filter(
        (pl.col("variant") == "ID-small") & (pl.col("backbone") == "sasrec") & (pl.col("protocol") == "full")
        & (pl.col("metric") == "HR@5"))
    vvals = [json.loads((r.run_dir / "metrics.json").read_text())["valid"]["HR@5"]
             for r in runs if r.variant == "ID-small" and r.backbone == "sasrec"]
    assert vrow["mean"][0] == pytest.approx(np.mean(vvals))


def test_grid_validation_errors(tmp_path):
    from mmseqrec.errors import InputError

    bad = tmp_path / "g.yaml"
    bad.write_text(yaml.safe_dump({"datasets": {"a": "x"}, "baseline": "nope", "variants": {"A": {}}}))
    with pytest.raises(InputError, match="baseline"):
        load_grid(bad)
    bad.write_text(yaml.safe_dump({"datasets": {"a": "x"}, "protocols": ["sampled"]}))
    with pytest.raises(InputError):
        load_grid(bad)


def test_longtail_cli_on_a_trained_run(grid_file, tmp_path, capsys):
    """`mmseqrec longtail RUN` splits the run's test cases into user-length and popularity groups."""
    from mmseqrec.cli import main

    torch.set_num_threads(1)
    grid = load_grid(grid_file, ["seeds=[1]", "backbones=[sasrec]", "protocols=[full]"])
    runs = run_grid(grid, tmp_path / "out", progress=False)
    run_dir = runs[0].run_dir
    capsys.readouterr()
    try:
        main(["longtail", str(run_dir), "--user-thresholds", "5", "--item-thresholds", "3,1000", "--json"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    rows = json.loads(capsys.readouterr().out)
    n_cases = pl.read_parquet(run_dir / "ranks.parquet").height
    by = {}
    for r in rows:
        by.setdefault(r["by"], 0)
        by[r["by"]] += r["n"]
    assert by == {"user_length": n_cases, "item_popularity": n_cases}
    assert [r["group"] for r in rows if r["by"] == "item_popularity"] == ["<3", "[3,1000)", ">=1000"]


def test_rescore_files_by_protocol_and_history_then_experiment_and_compare(grid_file, tmp_path, capsys):
    """`evaluate --protocol P` on a grid run writes the one eval schema, so a later `experiment` reads it (no
    KeyError); re-scores are named by protocol and history setting and `compare` picks the matching one or refuses."""
    from mmseqrec.cli import main
    from mmseqrec.evaluate.report import compare_runs, load_run_result

    def cli(*args):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            return exc.code or 0
        return 0

    torch.set_num_threads(1)
    grid = load_grid(grid_file, ["seeds=[1]", "backbones=[sasrec]", "protocols=[full,sampled:5]"])
    out = tmp_path / "out"
    runs = run_grid(grid, out, progress=False)
    a, b = runs[0].run_dir, runs[1].run_dir
    m = json.loads((a / "metrics.json").read_text())
    assert m["scoring_dtype"] == "float32" and m["ties"] == "pessimistic" and m["exclude_history"] is False
    e = json.loads((a / "eval-sampled-5.json").read_text())
    assert set(e) >= {"protocol", "exclude_history", "ties", "scoring_dtype", "test"} and "valid" not in e

    # re-score with the evaluate command (another split, then the same protocol with history excluded)
    assert cli("evaluate", a, "--protocol", "sampled:5", "--split", "both") == 0
    e2 = json.loads((a / "eval-sampled-5.json").read_text())
    assert set(e2) >= {"valid", "test"} and e2["scoring_dtype"] == "float32"
    assert (a / "ranks-sampled-5.parquet").exists() and (a / "ranks-sampled-5-valid.parquet").exists()
    run_grid(grid, out, progress=False)  # reads the re-score (used to fail with KeyError: 'test')
    assert "sampled:5" in write_report(grid, out)["markdown"].read_text()

    before = (a / "metrics.json").read_bytes()
    for run in (a, b):
        assert cli("evaluate", run, "--protocol", "full", "--exclude-history") == 0
        assert (run / "eval-full-exclhist.json").exists() and (run / "ranks-full-exclhist.parquet").exists()
    assert (a / "metrics.json").read_bytes() == before  # the training protocol's result is not overwritten
    excl = load_run_result(a, "full", exclude_history=True)
    assert excl.exclude_history and excl.record.path.name == "eval-full-exclhist.json"
    assert load_run_result(a, "full").record.path.name == "metrics.json"
    assert excl.test["HR@5"] >= load_run_result(a, "full").test["HR@5"]  # fewer competitors
    rows = compare_runs(excl, load_run_result(b, "full", exclude_history=True))
    assert rows and all("p_adj" in r for r in rows)
    capsys.readouterr()
    assert cli("compare", a, b, "--protocol", "full", "--exclude-history", "--json") == 0
    assert "history excluded" in json.loads(capsys.readouterr().out)["protocol"]
    assert cli("compare", a, b, "--protocol", "sampled:5", "--exclude-history") != 0
    err = capsys.readouterr().err
    assert "not scored on test under 'sampled:5' with history excluded" in err
    assert "--exclude-history" in err


def test_validation_only_grid_prints_no_test_metrics(grid_file, tmp_path, capsys):
    torch.set_num_threads(1)
    grid = load_grid(grid_file, ["seeds=[1]", "backbones=[gru4rec]", "protocols=[full,sampled:5]",
                                 "report_split=valid", "variants={ID-small: {item_encoder: {name: id, dim: 8}}}",
                                 "variant_backbones={}"])
    capsys.readouterr()
    runs = run_grid(grid, tmp_path / "out", progress=False)
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert ": valid HR@5" in text and "test" not in text
    e = json.loads((runs[0].run_dir / "eval-sampled-5.json").read_text())
    assert "valid" in e and "test" not in e  # a validation-only grid never scores test under extra protocols
    paths = write_report(grid, tmp_path / "out")
    csv = pl.read_csv(paths["csv"])
    assert not any(c.startswith("p_") for c in csv.columns)
    assert "| ID-small |" in paths["markdown"].read_text()


def test_grid_dataset_paths_are_absolute_and_checked(tmp_path, monkeypatch, capsys):
    """Relative dataset paths: the working directory first, then the YAML's folder; errors and dry runs show
    absolute paths, and a dry run checks that each dataset is prepared and each embedding store exists."""
    from helpers import write_cycle_dataset

    from mmseqrec.cli import main
    from mmseqrec.errors import InputError

    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    write_cycle_dataset(cfg_dir / "data" / "cycle", n_users=10, n_items=8, seq_len=5)
    grid_path = cfg_dir / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"datasets": {"cycle": "data/cycle"}, "seeds": [1]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    grid = load_grid(grid_path)
    assert grid.datasets == {"cycle": str((cfg_dir / "data" / "cycle").resolve())}
    runs = run_grid(grid, tmp_path / "out", dry_run=True)
    assert len(runs) == 1 and not (tmp_path / "out").exists()
    assert f"dataset cycle: {(cfg_dir / 'data' / 'cycle').resolve()} (prepared)" in " ".join(
        capsys.readouterr().err.split())

    grid_path.write_text(yaml.safe_dump({"datasets": {"gone": "data/nope"}}))
    with pytest.raises(SystemExit) as exc:
        main(["experiment", str(grid_path), "--dry-run", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"field 'datasets.gone': dataset directory not found (looked at {elsewhere.resolve()}/data/nope and " \
           f"{cfg_dir.resolve()}/data/nope)" in err

    (cfg_dir / "data" / "empty").mkdir()
    grid_path.write_text(yaml.safe_dump({"datasets": {"e": "data/empty"}}))
    with pytest.raises(InputError, match=r"/data/empty is not a prepared dataset directory \(missing "
                                         r"interactions.parquet, items.parquet, manifest.json\)"):
        run_grid(load_grid(grid_path), tmp_path / "out", dry_run=True)

    grid_path.write_text(yaml.safe_dump({"datasets": {"cycle": "data/cycle"}, "variants": {
        "ID": {"item_encoder": {"name": "id"}},
        "text": {"item_encoder": {"name": "content", "embedding": "text-minilm"}}}}))
    with pytest.raises(InputError, match=r"variant 'text' needs the embedding store\(s\) text-minilm in "):
        run_grid(load_grid(grid_path), tmp_path / "out", dry_run=True)
    grid_path.write_text(yaml.safe_dump({"datasets": {"cycle": "data/cycle"}, "base": {"train": {"lr": "x"}}}))
    with pytest.raises(InputError, match="train.lr"):  # a bad run config fails in the dry run, not hours later
        run_grid(load_grid(grid_path), tmp_path / "out", dry_run=True)


def test_preset_variant_merges_base_preset_then_its_own_keys(tmp_path, monkeypatch):
    """``preset``: a file per backbone, looked up like a dataset path; base < preset < the variant's own keys;
    the variant runs on the mapped backbones only; a missing file names the paths tried."""
    from helpers import write_cycle_dataset

    from mmseqrec.errors import InputError
    from mmseqrec.experiment import plan_runs

    data = write_cycle_dataset(tmp_path / "ds", n_users=10, n_items=8, seq_len=5)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "p-sasrec.yaml").write_text(yaml.safe_dump({
        "model": {"name": "sasrec", "dropout": 0.5, "n_heads": 1}, "objective": {"name": "bce"},
        "train": {"epochs": 200, "lr": 0.001}, "eval": {"protocol": "sampled:100"}}))
    grid_path = tmp_path / "grid" / "g.yaml"
    grid_path.parent.mkdir()
    grid_path.write_text(yaml.safe_dump({
        "datasets": {"c": str(data)}, "backbones": ["sasrec", "gru4rec"], "seeds": [1, 2],
        "base": {"model": {"max_len": 10, "dropout": 0.2}, "objective": {"name": "ce"},
                 "train": {"epochs": 30, "num_threads": 1}},
        "variants": {"ID": {"item_encoder": {"name": "id"}},
                     "code": {"preset": {"sasrec": "../presets/p-sasrec.yaml"}, "train": {"epochs": 7}}}}))
    monkeypatch.chdir(tmp_path / "ds")  # not found from the working directory: next to the YAML
    grid = load_grid(grid_path)
    assert grid.variants["code"]["preset"] == {"sasrec": str((tmp_path / "presets" / "p-sasrec.yaml").resolve())}
    runs = [r for r in plan_runs(grid, tmp_path / "out") if r.variant == "code"]
    assert [(r.backbone, r.seed) for r in runs] == [("sasrec", 1), ("sasrec", 2)]
    cfg = runs[0].config
    assert "preset" not in cfg
    assert cfg["model"] == {"name": "sasrec", "max_len": 10, "dropout": 0.5, "n_heads": 1}
    assert cfg["objective"] == {"name": "bce"}
    assert cfg["train"] == {"epochs": 7, "lr": 0.001, "num_threads": 1}
    assert cfg["eval"]["protocol"] == "full"  # selection under the table's first protocol, as every row
    run_grid(grid, tmp_path / "out", dry_run=True)  # the merged configs validate

    grid_path.write_text(grid_path.read_text().replace("p-sasrec.yaml", "nope.yaml"))
    with pytest.raises(InputError, match=r"field 'variants.code.preset.sasrec': preset file not found \(looked at "):
        load_grid(grid_path)


def test_grid_builds_a_store_from_its_own_run_for_llmemb(tmp_path, capsys):
    """``stores``: the collaborative store of LLMEmb is the item table of the grid's ID-only SASRec run (seed
    named), built after that run and before the runs that read it; an existing store of that name from another
    run is an error, not overwritten."""
    from helpers import write_cycle_dataset

    from mmseqrec.embed.store import embed_dir, load_embedding, save_embedding
    from mmseqrec.errors import InputError
    from mmseqrec.experiment import plan_runs
    from mmseqrec.train.run import load_run

    torch.set_num_threads(1)
    data = write_cycle_dataset(tmp_path / "ds", n_users=40, n_items=12, seq_len=8)
    rng = np.random.default_rng(0)
    save_embedding(data, "text", rng.normal(size=(13, 16)).astype(np.float32), {"source": "test"})
    grid = {
        "datasets": {"c": str(data)}, "backbones": ["sasrec"], "seeds": [1, 2], "metrics": ["HR@5"],
        "base": {"train": {"epochs": 2, "batch_size": 16, "max_len": 8, "patience": 0, "progress": False,
                           "select_metric": "HR@5"}, "objective": {"name": "ce"}, "eval": {"ks": [5]}},
        "variants": {"LLMEmb+collab": {"item_encoder": {"name": "llmemb", "dim": 8, "embedding": "text",
                                                         "collab": "collab-sasrec"}},
                     "ID-only": {"item_encoder": {"name": "id", "dim": 8}}},
        "baseline": "ID-only",
        "stores": {"collab-sasrec": {"variant": "ID-only", "backbone": "sasrec", "seed": 2}},
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    g = load_grid(path)
    out = tmp_path / "out"
    planned = plan_runs(g, out)
    assert (planned[0].variant, planned[0].seed) == ("ID-only", 2)  # the store's source run first
    run_grid(g, out, dry_run=True)  # the store does not exist yet: the dry run still passes
    assert "store collab-sasrec in " in capsys.readouterr().err
    run_grid(g, out, progress=False)
    src = out / "runs" / "c" / "ID-only" / "sasrec" / "seed2"
    meta = json.loads((embed_dir(data) / "collab-sasrec.json").read_text())
    assert meta["run"]["path"] == str(src.resolve())
    table = load_run(src, device="cpu").model.item_matrix().detach().numpy()
    store = load_embedding(data, "collab-sasrec")
    np.testing.assert_allclose(store.matrix[1:], table[1:], atol=2e-3)  # float16 store
    llm = load_run(out / "runs" / "c" / "LLMEmb+collab" / "sasrec" / "seed1", device="cpu")
    assert llm.config.item_encoder.collab == "collab-sasrec"
    np.testing.assert_allclose(llm.model.item_encoder.collab.numpy()[1:], store.matrix[1:], atol=1e-6)
    run_grid(g, out, progress=False)  # resumed: the store is the one of that run, kept
    md = write_report(load_grid(path, ["seeds=[1,2,3]"]), out)["markdown"].read_text()
    assert "| sasrec | LLMEmb+collab | " in md and "(2 of 3 seeds)" in md  # a row short of seeds says so

    stamp = (embed_dir(data) / "collab-sasrec.safetensors").stat().st_mtime_ns
    with pytest.raises(InputError, match="store 'collab-sasrec' exists and was not built from "):
        run_grid(g, tmp_path / "other", progress=False)  # same store name, another grid output
    assert (embed_dir(data) / "collab-sasrec.safetensors").stat().st_mtime_ns == stamp

    grid["stores"]["collab-sasrec"]["seed"] = 9
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(InputError, match=r"stores.collab-sasrec: seed 9 is not one of the seeds"):
        load_grid(path)
