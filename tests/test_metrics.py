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
