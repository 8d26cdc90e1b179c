import json
import math

import pytest

from stages.metrics import MetricsLogger, read_metrics, truncate_after


def test_jsonl_rows_truncate_on_resume_and_nonfinite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lg = MetricsLogger(path, total_steps=5, progress_bar=True)
    for s in range(1, 5):
        lg.log(s, {"loss": 1.0 / s, "nan": math.nan})
    lg.close()
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[0]["nan"] == "nan"
    for line in path.read_text().splitlines():
        json.loads(line)  # strict JSON on every line
    truncate_after(path, 2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_tensorboard_optional_backend(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs the tensorboard package"):
            MetricsLogger(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb")
        return
    lg = MetricsLogger(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb", progress_bar=False)
    lg.log(1, {"loss": 1.0})
    lg.close()
    assert any((tmp_path / "tb").iterdir())


def test_summary_shows_how_the_judges_rankings_spread(tmp_path):
    """The pipeline summary reports the RLHF judge's most frequent ranking and its share over the
    training steps (validation rows are not RL comparisons), beside the table's other columns."""
    from stages.pipeline import ranking_spread, table

    path = tmp_path / "metrics.jsonl"
    lg = MetricsLogger(path, total_steps=2, progress_bar=False)
    dist = lambda **kw: {f"genrm/ranking_{k}": kw.get(str(k), 0.0) for k in (1, 2, 3, 4, 5, 6, "tie")}  # noqa: E731
    lg.log(0, {"val/genrm/score": 4.0, **dist(tie=1.0)})
    lg.log(1, dist(**{"tie": 0.5, "2": 0.5}))
    lg.log(2, dist(**{"tie": 0.25, "2": 0.5, "6": 0.25}))
    lg.close()
    spread = ranking_spread(path)
    assert spread["judge_top_ranking"] == "2" and spread["judge_top_ranking_share"] == pytest.approx(0.5)
    assert sum(spread["judge_rankings"].values()) == pytest.approx(1.0)
    assert ranking_spread(tmp_path / "none.jsonl") == {}
    text = table({"stages": [{"stage": "rlhf", **spread}], "lineage": []})
    assert "judge's most frequent ranking (share)" in text and "| 2: 0.50 |" in text
