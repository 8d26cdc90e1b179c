"""SFT data: OpenAI-style `messages` rows from JSONL, Parquet, a local HF datasets dir or a hub name;
weighted mixing; a seeded train/validation split.

A malformed row stops the run with `file:line: field: problem`, or, with `skip_malformed`, is
skipped and counted (the count reaches the metrics and lineage).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from chat_template.conversation import ConversationError, normalize


class DataError(ValueError):
    """A bad data source or row; the message names the file, line and field."""


@dataclass
class DataSource:
    # JSONL / Parquet file, local HF `datasets` directory, hub dataset name, or a path the stage
    # generated from a built-in recipe (see common.synthetic.BUILTIN).
    path: str = "builtin:sft_default"
    # Multiplier on this source's rows: 0.5 keeps a seeded half, 2.0 repeats each row twice.
    weight: float = 1.0
    split: str = "train"  # for datasets directories and hub datasets
    max_rows: Optional[int] = None


@dataclass
class SFTDataConfig:
    sources: list[DataSource] = field(default_factory=lambda: [DataSource()])
    val_fraction: float = 0.05
    skip_malformed: bool = False


@dataclass
class Row:
    messages: list[dict]
    tools: Optional[list[dict]]
    origin: str  # file:line, for error messages after loading


@dataclass
class LoadedData:
    train: list[Row]
    val: list[Row]
    skipped: int
    per_source: list[dict]  # {source, rows} for lineage


def _read_raw(path: str, split: str) -> Iterator[tuple[str, Any]]:
    p = Path(path)
    if p.is_file() and p.suffix in (".jsonl", ".json"):
        with open(p) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{p}:{n}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{p}:{n}", DataError(f"{p}:{n}: invalid JSON ({e.msg} at column {e.colno})")
    elif p.is_file() and p.suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(p).to_pylist(), 1):
            yield f"{p}:row {n}", row
    elif p.is_dir():
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - report any loader failure as a data error
            raise DataError(f"{p}: not a Hugging Face datasets directory ({e})") from None
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise DataError(f"{p}: no split '{split}' (has {list(ds)})")
            ds = ds[split]
        for n, row in enumerate(ds, 1):
            yield f"{p}[{split}]:row {n}", row
    elif p.exists():
        raise DataError(f"{p}: unsupported data file (use .jsonl, .parquet or a datasets directory)")
    elif "/" in path and not path.startswith(("/", ".")):
        from datasets import load_dataset

        try:
            ds = load_dataset(path, split=split)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: cannot load hub dataset ({type(e).__name__}: {e})") from None
        for n, row in enumerate(ds, 1):
            yield f"{path}[{split}]:row {n}", row
    else:
        raise DataError(f"{path}: no such file or directory")


def parse_row(where: str, raw: Any) -> Row:
    if isinstance(raw, DataError):
        raise raw
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a row must be a JSON object with `messages`")
    if "messages" not in raw:
        raise DataError(f"{where}: messages: missing (each row needs an OpenAI-style `messages` list)")
    tools = raw.get("tools")
    if isinstance(tools, str):  # parquet/datasets often store nested JSON as a string
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError:
            raise DataError(f"{where}: tools: not valid JSON") from None
    try:
        messages, tools = normalize(raw["messages"], tools)
    except ConversationError as e:
        raise DataError(f"{where}: {e}") from None
    return Row(messages, tools, where)


def load_source(src: DataSource, skip_malformed: bool) -> tuple[list[Row], int]:
    rows, skipped = [], 0
    for where, raw in _read_raw(src.path, src.split):
        try:
            rows.append(parse_row(where, raw))
        except DataError:
            if not skip_malformed:
                raise
            skipped += 1
        if src.max_rows is not None and len(rows) >= src.max_rows:
            break
    if not rows:
        raise DataError(f"{src.path}: no usable rows")
    return rows, skipped


def _weighted(rows: list[Row], weight: float, rng: random.Random) -> list[Row]:
    whole, frac = int(weight), weight - int(weight)
    out = rows * whole
    if frac > 0:
        out += rng.sample(rows, round(frac * len(rows)))
    return out


def load_mixture(cfg: SFTDataConfig, seed: int) -> LoadedData:
    """All sources, each split into train/val (seeded), train rows weighted, then shuffled."""
    rng = random.Random(seed)
    train, val, skipped, per_source = [], [], 0, []
    for src in cfg.sources:
        if src.weight < 0:
            raise DataError(f"{src.path}: weight must be >= 0, got {src.weight}")
        rows, sk = load_source(src, cfg.skip_malformed)
        skipped += sk
        rows = rows[:]
        rng.shuffle(rows)
        n_val = int(round(len(rows) * cfg.val_fraction))
        val += rows[:n_val]
        train += _weighted(rows[n_val:], src.weight, rng)
        per_source.append({"source": src.path, "rows": len(rows), "skipped": sk, "weight": src.weight})
    rng.shuffle(train)
    return LoadedData(train, val, skipped, per_source)
