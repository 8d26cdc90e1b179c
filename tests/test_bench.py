"""bench/ scripts run and print one JSON line per packer (TRL's line only when it is installed)."""
import json

from bench import packing


def test_packing_bench_prints_json_lines(capsys):
    assert packing.main(["--n", "3000", "--pack-size", "1024"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    ours = next(r for r in rows if r.get("packer") == "nano-posttrain ffd")
    assert ours["efficiency"] > 0.99 and ours["packs"] > 0 and ours["tokens"] == sum(
        packing.lognormal_lengths(3000, 1024, 0))
    assert any("trl" in str(r.get("packer")) for r in rows)  # measured, or reported as skipped
