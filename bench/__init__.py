"""Benchmarks against peers. Each script measures us and the peer in one run, each in a child
process of its own (peak memory and threads are then per run), alternating them `repeats` times."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def alternate(module: str, argv: list[str], who: list[str], repeats: int, key: str, lower_is_better: bool,
              head: dict) -> dict[str, dict]:
    """Run `python -m module *argv --child <w>` for each w in `who`, `repeats` times, printing each
    child's JSON line (or an error line); returns each side's best run by `key`."""
    best: dict[str, dict] = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for _ in range(repeats):
        for w in who:
            proc = subprocess.run([sys.executable, "-m", module, *argv, "--child", w],
                                  capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                print(json.dumps({**head, "trainer": w, "error": proc.stderr.strip().splitlines()[-5:]}), flush=True)
                continue
            r = json.loads(lines[-1])
            print(json.dumps(r), flush=True)
            if w not in best or (r[key] < best[w][key]) == lower_is_better:
                best[w] = r
    return best
