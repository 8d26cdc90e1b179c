import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The embedded tiny model (seeded init), saved in HF format with its tokenizer."""
    from common.models import build_model, load_tokenizer
    from stages.checkpoint import save_pretrained
    from stages.config import load_config
    from stages.schema import RunConfig

    d = tmp_path_factory.mktemp("tiny")
    cfg = load_config(RunConfig, None, ["model=tiny"]).model
    tok = load_tokenizer(cfg)
    save_pretrained(build_model(cfg, tok), tok, d)
    return str(d)
