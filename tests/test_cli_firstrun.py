"""First run as a newcomer: --version, info statistics, the README's Python example, the ignored output
folders and the committed tree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from mmseqrec import __version__
from mmseqrec.cli import app
from mmseqrec.data.dataset import DatasetDir

REPO = Path(__file__).resolve().parents[1]


def test_version() -> None:
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"mmseqrec {__version__}"


def small_dataset(root: Path) -> Path:
    """users: 1 -> [1, 2, 3], 2 -> [2], 3 -> [1, 3, 3, 4, 2] (item 3 twice); 4 items."""
    root.mkdir(parents=True)
    seqs = {1: [1, 2, 3], 2: [2], 3: [1, 3, 3, 4, 2]}
    users = [u for u, s in seqs.items() for _ in s]
    items = [i for s in seqs.values() for i in s]
    pl.DataFrame({"user": users, "item": items, "timestamp": list(range(len(items)))},
                 schema_overrides={"user": pl.Int32, "item": pl.Int32}).write_parquet(root / "interactions.parquet")
    pl.DataFrame({"item": [1, 2, 3, 4], "item_id": ["a", "b", "c", "d"], "title": ["A", "B", "C", "D"]},
                 schema_overrides={"item": pl.Int32}).write_parquet(root / "items.parquet")
    (root / "manifest.json").write_text(json.dumps({"format": "table", "n_users": 3, "n_items": 4,
                                                    "n_interactions": 9}))
    return root


def test_info_prints_sequence_length_and_sparsity(tmp_path: Path) -> None:
    d = small_dataset(tmp_path / "ds")
    st = DatasetDir(d).stats()
    # lengths 3, 1, 5; distinct pairs 3 + 1 + 4 = 8 of 3 x 4 = 12; per-item counts 2, 3, 3, 1
    assert st == {"len_min": 1, "len_median": 3.0, "len_mean": 3.0, "len_max": 5, "item_inter_median": 2.5,
                  "sparsity": pytest.approx(1 - 8 / 12)}
    r = CliRunner().invoke(app, ["info", str(d)], terminal_width=200)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "min 1, median 3, mean 3.00, max 5" in out and "33.3333% of user x item pairs empty" in out


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    """The README's Python API example, run as written (in a scratch folder, with this checkout's source)."""
    blocks = readme_python_blocks()
    assert blocks, "README.md has no ```python example"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NDCG@10" in r.stdout


def test_readme_first_run_and_links() -> None:
    text = (REPO / "README.md").read_text()
    two = text.index("## The two commands")
    after = text[two: two + 1500]
    assert ".venv/bin/mmseqrec" in after and "source .venv/bin/activate" in after
    assert "docs/results.md" in text and (REPO / "docs" / "results.md").exists()
    assert "--epochs" in text and "--device" in text


def test_output_folders_are_ignored_and_no_logs_committed() -> None:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)

    if git("rev-parse").returncode != 0:
        pytest.skip("not a git checkout")
    for p in ("demo-out/x/results.md", "experiments/demo/results.md", "data/syn/manifest.json"):
        assert git("check-ignore", "-q", p).returncode == 0, p
    assert git("check-ignore", "-q", "configs/experiments/demo-backbones.yaml").returncode == 1
    tracked = git("ls-files").stdout.split()
    assert not [f for f in tracked if f.endswith(".log")]
