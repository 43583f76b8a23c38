"""The quality grid runs as one command and writes its table and plane (at a size that proves the
plumbing only: a tiny random base model, a few notes, one epoch)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_grid_reuses_the_first_stage_and_writes_table_and_plane(tiny_bert, tmp_path):
    quality = load_bench()
    quality.main(
        ["--size", "smoke", "--methods", "lora", "--variants", "defaults,head_only",
         "--base-model", tiny_bert, "--out", str(tmp_path)]
    )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["variant"]) for r in rows] == [
        (1, "defaults"), (1, "head_only"), (2, "defaults"), (2, "head_only")
    ]  # fmt: skip
    for row in rows:
        assert 0 <= row["site_a"] <= 1 and 0 <= row["site_b"] <= 1
        assert {"tfidf_a", "tfidf_ab_on_b", "best_possible_a", "best_possible_b"} <= set(row)
    second = [r for r in rows if r["stage"] == 2]
    assert all(r["forgetting"] == rows[0]["site_a"] - r["site_a"] for r in second)
    # The head-only runs really froze everything but the head: their encoder/adapter never moved.
    assert all(max(r["update_norm_by_epoch"]) == 0 for r in rows if r["variant"] == "head_only")
    assert all(max(r["update_norm_by_epoch"]) > 0 for r in rows if r["variant"] == "defaults")
    table = (tmp_path / "table.md").read_text()
    assert table.count("| lora |") == 4 and "vs head-only" in table
    assert (tmp_path / "plane.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
