"""Config system: inheritance, group choices, override precedence, schema rejection messages."""
from dataclasses import dataclass, field
from typing import Optional

import pytest
from omegaconf import MISSING

from stages import config as C
from stages.config import ConfigError, load_config, to_yaml


@dataclass
class Inner:
    lr: float = 1e-5
    max_steps: int = 10
    name: str = "x"


@dataclass
class Model:
    size: int = 1
    kind: str = "none"
    arch: Optional[dict] = None


@dataclass
class Schema:
    seed: int = 0
    exp: str = "demo"
    train: Inner = field(default_factory=Inner)
    model: Model = field(default_factory=Model)


@dataclass
class NeedsData:
    data_path: str = MISSING
    seed: int = 0


@pytest.fixture
def cfgdir(tmp_path, monkeypatch):
    d = tmp_path / "configs"
    (d / "model").mkdir(parents=True)
    monkeypatch.setattr(C, "CONFIG_DIR", d)
    monkeypatch.setattr(C, "REPO_ROOT", tmp_path)
    (d / "model" / "small.yaml").write_text("size: 2\nkind: small\n")
    (d / "model" / "big.yaml").write_text("size: 100\nkind: big\n")
    (d / "base.yaml").write_text("seed: 1\ntrain:\n  lr: 0.1\n  name: base\n")
    (d / "mid.yaml").write_text("defaults:\n  - base\n  - model: small\ntrain:\n  lr: 0.2\n")
    (d / "top.yaml").write_text("defaults:\n  - mid\ntrain:\n  max_steps: 5\nmodel:\n  kind: tuned\n")
    return d


def test_inheritance_and_precedence(cfgdir):
    cfg = load_config(Schema, cfgdir / "top.yaml")
    assert cfg.seed == 1                       # from base (over schema default 0)
    assert cfg.train.lr == 0.2                 # mid's body overrides base
    assert cfg.train.name == "base"            # untouched by later layers
    assert cfg.train.max_steps == 5            # top's body
    assert cfg.model.size == 2 and cfg.model.kind == "tuned"  # group file, then top's body wins
    cfg = load_config(Schema, cfgdir / "top.yaml", ["train.lr=3e-4", "seed=7"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.seed == 7  # command line wins over every file


def test_group_choice_on_command_line_replaces_default(cfgdir):
    cfg = load_config(Schema, cfgdir / "top.yaml", ["model=big"])
    assert cfg.model.size == 100               # big replaced small entirely...
    assert cfg.model.kind == "tuned"           # ...and the file body still applies after it
    cfg = load_config(Schema, cfgdir / "base.yaml", ["model=big"])  # group not in defaults: appended
    assert cfg.model.kind == "big"


def test_unknown_key_names_file_line_and_suggests(cfgdir):
    (cfgdir / "bad.yaml").write_text("defaults:\n  - base\ntrain:\n  lr: 0.3\n  max_step: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Schema, cfgdir / "bad.yaml")
    msg = str(e.value)
    assert "configs/bad.yaml:5" in msg and "train.max_step" in msg and "did you mean train.max_steps" in msg


def test_wrong_type_names_file_line(cfgdir):
    (cfgdir / "bad.yaml").write_text("seed: 1\ntrain:\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"configs/bad.yaml:3: train.max_steps: wrong type"):
        load_config(Schema, cfgdir / "bad.yaml")


def test_command_line_errors_name_the_override(cfgdir):
    with pytest.raises(ConfigError, match=r"command line 'trian.lr=1'.*unknown key"):
        load_config(Schema, cfgdir / "top.yaml", ["trian.lr=1"])
    with pytest.raises(ConfigError, match=r"command line 'seed=abc'.*seed: wrong type"):
        load_config(Schema, cfgdir / "top.yaml", ["seed=abc"])
    with pytest.raises(ConfigError, match="overrides are key=value"):
        load_config(Schema, cfgdir / "top.yaml", ["seed"])
    with pytest.raises(ConfigError, match=r"model=huge: no such option; choose one of \['big', 'small'\]"):
        (cfgdir / "g.yaml").write_text("defaults:\n  - model: huge\n")
        load_config(Schema, cfgdir / "g.yaml")
    with pytest.raises(ConfigError, match=r"command line 'model=huge': model=huge: no such option"):
        load_config(Schema, cfgdir / "top.yaml", ["model=huge"])


def test_missing_required_value(cfgdir):
    (cfgdir / "d.yaml").write_text("seed: 3\n")
    with pytest.raises(ConfigError, match="required value.*data_path"):
        load_config(NeedsData, cfgdir / "d.yaml")
    assert load_config(NeedsData, cfgdir / "d.yaml", ["data_path=/x.jsonl"]).data_path == "/x.jsonl"


def test_bad_yaml_and_missing_file_and_cycle(cfgdir):
    (cfgdir / "broken.yaml").write_text("seed: 1\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: invalid YAML"):
        load_config(Schema, cfgdir / "broken.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Schema, cfgdir / "nope.yaml")
    (cfgdir / "a.yaml").write_text("defaults:\n  - b\n")
    (cfgdir / "b.yaml").write_text("defaults:\n  - a\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Schema, cfgdir / "a.yaml")


def test_free_form_dict_accepts_any_keys_and_yaml_round_trips(cfgdir):
    cfg = load_config(Schema, cfgdir / "top.yaml", ["model.arch.model_type=qwen3", "model.arch.layers=[1,2]"])
    assert cfg.model.arch == {"model_type": "qwen3", "layers": [1, 2]}
    assert isinstance(cfg.model.arch["layers"], list)  # plain Python, not OmegaConf containers
    saved = cfgdir / "saved.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(Schema, saved) == cfg


def test_repo_model_presets_load():
    from stages.schema import RunConfig

    for name in ("tiny", "tiny_moe", "tiny_qwen3", "tiny_llama"):
        cfg = load_config(RunConfig, None, [f"model={name}"])
        assert cfg.model.arch["model_type"] in ("nemotron_h", "qwen3", "llama")
    with pytest.raises(ConfigError, match=r"model.lora.rank: unknown key \(did you mean model.lora.r\?\)"):
        load_config(RunConfig, None, ["model=tiny", "model.lora.rank=8"])


def test_a_mapping_set_as_a_whole_replaces_the_inherited_one(cfgdir):
    """`env_ratios: {code: 1}` in a child file or on the command line means code only; a dotted
    override into a mapping still edits one key."""
    (cfgdir / "arch.yaml").write_text("defaults:\n  - base\nmodel:\n  arch: {model_type: llama, layers: 2}\n")
    (cfgdir / "child.yaml").write_text("defaults:\n  - arch\nmodel:\n  arch: {model_type: qwen3}\n")
    assert load_config(Schema, cfgdir / "child.yaml").model.arch == {"model_type": "qwen3"}
    cfg = load_config(Schema, cfgdir / "arch.yaml", ["model.arch={hidden: 8}"])
    assert cfg.model.arch == {"hidden": 8}
    cfg = load_config(Schema, cfgdir / "arch.yaml", ["model.arch.layers=4"])
    assert cfg.model.arch == {"model_type": "llama", "layers": 4}
