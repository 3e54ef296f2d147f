import copy

import pytest
import yaml

from capmix.config import BASE_CONFIGS, ConfigError, pipeline_config, update_nested, validate_config
from tests.conftest import REPO

CONFIGS = ["config.yaml", "smoke.yaml", "datacomp_small.yaml", "datacomp_medium.yaml",
           "datacomp_large.yaml", "datacomp_xlarge.yaml", "url_caption_table.yaml"]


def base_config():
    """The raw (unvalidated) config the Snakefile starts from: catalogue + default."""
    merged: dict = {}
    for path in BASE_CONFIGS:
        with open(path) as handle:
            update_nested(merged, yaml.safe_load(handle))
    return merged


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    extra = [REPO / "config" / name] if name != "config.yaml" else []
    config = pipeline_config(*extra)
    assert config["pools"]


def test_defaults_come_from_the_schema():
    config = validate_config(base_config())
    fetch = config["pools"][0]["fetch"]
    assert fetch["resize_mode"] == "keep_ratio_largest"
    assert fetch["blur_faces"] == "auto"
    assert config["toy_worlds"]["smoke"]["pool_caption_modes"]["right"] == 0.3
    assert config["resources"]["fetch"]["threads"] >= 1


def test_datacomp_pools_get_datacomp_download_settings():
    config = pipeline_config(REPO / "config" / "datacomp_small.yaml")
    (pool,) = config["pools"]
    assert pool["name"] == "datacomp_small"
    assert pool["source"]["hf_repo"] == "mlfoundations/datacomp_small"
    assert pool["fetch"] == {
        "image_size": 512, "resize_mode": "keep_ratio_largest", "resize_only_if_bigger": True,
        "encode_format": "jpg", "encode_quality": None, "samples_per_shard": 10000,
        "retries": 2, "timeout": 10, "threads_per_process": 64, "blur_faces": "auto",
    }


def test_defaults_are_not_shared_between_pools():
    config = base_config()
    config["pools"].append({"name": "second", "source": {"type": "toy", "world": "smoke"},
                            "scorer": "toy_clip"})
    validate_config(config)
    config["pools"][0]["fetch"]["image_size"] = 999
    assert config["pools"][-1]["fetch"]["image_size"] == 512


def expect_error(config, *fragments):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_non_integer_seed_names_the_key():
    config = base_config()
    config["seed"] = "abc"
    expect_error(config, "'seed'", "integer")


def test_unknown_source_type_names_key_and_allowed_values():
    config = base_config()
    config["pools"][0]["source"]["type"] = "webscrape"
    expect_error(config, "'pools[0].source.type'", "'toy'", "'datacomp'", "'table'")


def test_unknown_key_is_named():
    config = base_config()
    config["pools"][0]["fetch"]["imagesize"] = 64
    expect_error(config, "'pools[0].fetch'", "imagesize")


def test_out_of_range_and_missing_keys():
    config = base_config()
    config["toy_worlds"]["smoke"]["dead_url_fraction"] = 1.5
    expect_error(config, "'toy_worlds.smoke.dead_url_fraction'", "maximum")
    config = base_config()
    config["pools"][0]["source"] = {"type": "table"}
    expect_error(config, "'pools[0].source'", "'path'")
    config = base_config()
    config["pools"][0]["source"] = {"type": "datacomp", "scale": "huge", "hf_repo": "a/b"}
    expect_error(config, "'pools[0].source.scale'", "'small'")


def test_toy_world_probabilities_must_sum_to_one():
    config = base_config()
    config["toy_worlds"]["smoke"]["pool_caption_modes"] = {
        "right": 0.5, "partial": 0.5, "other_image": 0.5, "non_visual": 0, "boilerplate": 0}
    expect_error(config, "'toy_worlds.smoke'", "pool_caption_modes must sum to 1")


def test_png_quality_is_a_compression_level():
    config = base_config()
    config["pools"][0]["fetch"].update(encode_format="png", encode_quality=95)
    expect_error(config, "'pools[0].fetch.encode_quality'", "maximum 9")


def test_undefined_toy_world_and_duplicate_pool_names():
    config = base_config()
    config["pools"][0]["source"]["world"] = "atlantis"
    expect_error(config, "toy world 'atlantis' is not defined", "default")
    config = base_config()
    config["pools"].append(copy.deepcopy(config["pools"][0]))
    expect_error(config, "'toy_default' is used more than once")
