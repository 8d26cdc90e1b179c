"""Packing alone: our packer (sft/packing.py, first-fit decreasing) vs TRL's BFD packer
(`trl.data_utils.pack_dataset(strategy="bfd")`) on the same log-normal length distribution, in one
script run. Prints one JSON line per packer: efficiency (real tokens / pack tokens), packs, seconds.

    python -m bench.packing [--n 100000] [--pack-size 4096] [--seed 0]     (make bench-packing)

TRL packs a `datasets.Dataset` of token lists (its real input), so its time includes building the
packed rows; ours returns the bins (indices), which is what our SFT data path consumes. Both are
timed from lengths/tokens in memory to packs.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def lognormal_lengths(n: int, pack_size: int, seed: int) -> list[int]:
    """Median ~600 tokens with a long tail (sigma 1), clipped to [16, pack_size]: SFT-chat-like."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=np.log(600), sigma=1.0, size=n), 16, pack_size).astype(int).tolist()


def ours(lengths: list[int], pack_size: int) -> dict:
    from sft.packing import efficiency, pack

    t0 = time.perf_counter()
    res = pack(lengths, pack_size, "ffd")
    dt = time.perf_counter() - t0
    return {"packer": "nano-posttrain ffd", "efficiency": efficiency(res, lengths, pack_size),
            "packs": len(res.bins), "seconds": dt}


def trl_bfd(lengths: list[int], pack_size: int) -> dict:
    import trl
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    ds = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    t0 = time.perf_counter()
    packed = pack_dataset(ds, pack_size, strategy="bfd")
    dt = time.perf_counter() - t0
    rows = packed["input_ids"]
    tokens = sum(len(r) for r in rows)
    return {"packer": f"trl {trl.__version__} bfd", "efficiency": tokens / (len(rows) * pack_size),
            "packs": len(rows), "seconds": dt, "tokens_kept": tokens}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.packing")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--pack-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    lengths = lognormal_lengths(a.n, a.pack_size, a.seed)
    common = {"bench": "packing", "n": a.n, "pack_size": a.pack_size, "tokens": sum(lengths),
              "machine": platform.processor() or platform.machine()}
    results = [ours(lengths, a.pack_size)]
    try:
        results.append(trl_bfd(lengths, a.pack_size))
    except ImportError as e:
        print(json.dumps({**common, "packer": "trl bfd", "skipped": f"trl not installed ({e})"}))
    for r in results:
        print(json.dumps({**common, **r}))
    if len(results) == 2:
        ours_, trl_ = results
        print(json.dumps({**common, "ratio_efficiency_ours_over_trl": ours_["efficiency"] / trl_["efficiency"],
                          "ratio_time_ours_over_trl": ours_["seconds"] / trl_["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
