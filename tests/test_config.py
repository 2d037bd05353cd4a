import os

import pytest

from fcos.config import ConfigError, dump_config, load_config

RECIPES = ["rt_dla34", "rt_r50", "r50_ms_2x", "tv_r50", "demo_shapes"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_and_round_trip(repo_root, tmp_path, name):
    cfg = load_config(os.path.join(repo_root, "configs", f"{name}.yml"))
    out = tmp_path / "resolved.yml"
    dump_config(cfg, str(out))
    again = load_config(str(out))
    again.source = cfg.source
    assert again == cfg


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yml"
    p.write_text("model:\n  head:\n    num_conv: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    msg = str(e.value)
    assert "model.head.num_conv" in msg and "bad.yml" in msg and "num_convs" in msg


def test_overrides_are_typed(repo_root):
    cfg = load_config(
        os.path.join(repo_root, "configs/rt_dla34.yml"),
        ["model.head.num_convs=2", "optim.lr=0.02", "data.class_names=[a,b]", "model.num_classes=2"],
    )
    assert cfg.model.head.num_convs == 2 and cfg.optim.lr == 0.02 and cfg.data.class_names == ["a", "b"]
    with pytest.raises(ConfigError, match="model.head.num_convs"):
        load_config(os.path.join(repo_root, "configs/rt_dla34.yml"), ["model.head.num_convs=two"])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(os.path.join(repo_root, "configs/rt_dla34.yml"), ["optim.lr"])


def test_cross_field_checks(repo_root):
    path = os.path.join(repo_root, "configs/rt_dla34.yml")
    with pytest.raises(ConfigError, match="model.strides"):
        load_config(path, ["model.fpn.num_extra_levels=2"])
    with pytest.raises(ConfigError, match="model.backbone.name"):
        load_config(path, ["model.backbone.name=vgg"])


def test_base_inheritance_merges_mappings(tmp_path):
    (tmp_path / "base.yml").write_text("optim: {lr: 0.5, momentum: 0.8}\n")
    (tmp_path / "child.yml").write_text("_base_: base.yml\noptim: {lr: 0.1}\n")
    cfg = load_config(str(tmp_path / "child.yml"))
    assert cfg.optim.lr == 0.1 and cfg.optim.momentum == 0.8
