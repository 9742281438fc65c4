"""Console output shows protocol names verbatim: rich's emoji codes would turn ``sampled:100:popularity`` into
``sampled💯popularity`` (seen in an `experiment` log)."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmseqrec"


def test_every_console_is_built_without_emoji_codes():
    calls = [(p.name, m.group(0)) for p in SRC.rglob("*.py")
             for m in re.finditer(r"\bConsole\([^)]*\)", p.read_text())]
    assert calls, "no rich Console found: the scan is broken"
    assert [c for c in calls if "emoji=False" not in c[1]] == []


def test_runner_console_prints_a_protocol_name_verbatim():
    from mmseqrec.experiment import runner

    with runner._console.capture() as cap:  # the module's console is left as it was (other tests read stderr)
        runner._console.print("seed 43: sampled:100:popularity: test HR@10 0.35", highlight=False)
    assert "sampled:100:popularity" in cap.get()
