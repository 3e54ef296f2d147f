import copy

import pytest
import yaml

from capmix.config import (
    BASE_CONFIGS,
    ConfigError,
    load_schema,
    pipeline_config,
    update_nested,
    validate_config,
)
from tests.conftest import REPO

CONFIGS = ["config.yaml", "smoke.yaml", "datacomp_small.yaml", "datacomp_medium.yaml",
           "datacomp_400m.yaml", "datacomp_large.yaml", "datacomp_xlarge.yaml",
           "url_caption_table.yaml", "laion_coco.yaml", "captionnet.yaml"]


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


def test_targets_are_listed_once_in_the_schema():
    """`targets` and `pools[].targets` allow one list, $defs.target (the workflow reads it and
    checks at start-up that it says what each target builds)."""
    schema = load_schema()
    one_list = {"$ref": "#/$defs/target"}
    assert schema["properties"]["targets"]["items"] == one_list
    assert schema["$defs"]["pool"]["properties"]["targets"]["items"] == one_list
    assert "findings" in schema["$defs"]["target"]["enum"]


def test_datacomp_pools_get_datacomp_download_settings():
    config = pipeline_config(REPO / "config" / "datacomp_small.yaml")
    (pool,) = config["pools"]
    assert pool["name"] == "datacomp_small"
    assert pool["source"]["hf_repo"] == "mlfoundations/datacomp_small"
    assert pool["fetch"] == {
        "image_size": 512, "resize_mode": "keep_ratio_largest", "resize_only_if_bigger": True,
        "encode_format": "jpg", "encode_quality": None, "samples_per_shard": 10000,
        "retries": 2, "timeout": 10, "threads_per_process": 64, "blur_faces": "auto",
        "min_image_size": None, "max_image_area": None, "max_body_bytes": None,
        "deadline": None, "retry_reasons": None,
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


def _set(path: str, value):
    """A mutation that sets one key (dotted path; list items as integers)."""
    def mutate(config):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


def _set_eval_source(task_name: str, **values):
    def mutate(config):
        task = next(t for t in config["eval_suites"]["datacomp"]["tasks"]
                    if t["name"] == task_name)
        task["source"].update(values)
    return mutate


def _rename(section: str, old: str, new: str):
    def mutate(config):
        config[section][new] = config[section].pop(old)
    return mutate


#: Config mistakes, each refused at start-up with the key named (before any job runs).
CONFIG_MISTAKES = {
    "captioner name with a space": (_rename("captioners", "toy_captioner", "toy captioner"),
                                    ["'captioners'", "'toy captioner'"]),
    "captioner named raw (the raw caption set)": (
        _rename("captioners", "toy_captioner", "raw"), ["'captioners'", "'raw'"]),
    "scorer name with a slash": (_rename("scorers", "toy_clip", "toy/clip"),
                                 ["'scorers'", "'toy/clip'"]),
    "captioner name in upper case": (_rename("captioners", "blip_large", "BLIP"),
                                     ["'captioners'", "'BLIP'"]),
    "pool name with a dash": (_set("pools.0.name", "toy-default"), ["'pools[0].name'"]),
    "seed as text": (_set("seed", "zero"), ["'seed'", "integer"]),
    "negative image size": (_set("pools.0.fetch.image_size", -1), ["'pools[0].fetch.image_size'"]),
    "unknown encode format": (_set("pools.0.fetch.encode_format", "gif"),
                              ["'pools[0].fetch.encode_format'", "'jpg'"]),
    "unknown target": (_set("targets", ["fetch", "everything"]), ["'targets[1]'"]),
    "pool with an unknown captioner": (_set("pools.0.captioners", ["blip3"]),
                                       ["'pools[0].captioners'", "unknown captioner 'blip3'"]),
    "pool with an unknown scorer": (_set("pools.0.scorer", "clip_xxl"),
                                    ["'pools[0].scorer'", "unknown scorer 'clip_xxl'"]),
    "allow_local_urls not a boolean": (
        _set("pools.0.source", {"type": "table", "path": "t.csv", "allow_local_urls": "yes"}),
        ["'pools[0].source.allow_local_urls'", "boolean"]),
    "allow_local_urls on a toy source": (
        _set("pools.0.source.allow_local_urls", True), ["'pools[0].source'"]),
    "table source without a path": (_set("pools.0.source", {"type": "table"}),
                                    ["'pools[0].source'", "'path'"]),
    "table format unknown": (
        _set("pools.0.source", {"type": "table", "path": "t.xlsx", "format": "xlsx"}),
        ["'pools[0].source.format'", "'csv'"]),
    "datacomp repo not owner/name": (
        _set("pools.0.source", {"type": "datacomp", "scale": "small", "hf_repo": "../etc"}),
        ["'pools[0].source.hf_repo'"]),
    "references_column not text": (_set("pools.2.references_column", 3),
                                   ["'pools[2].references_column'"]),
    "typical colour probability above 1": (
        _set("toy_worlds.default.typical_colour_probability", 1.5),
        ["'toy_worlds.default.typical_colour_probability'"]),
    "a retry reason that does not exist": (
        _set("pools.0.fetch.retry_reasons", ["timeout", "bad_luck"]),
        ["'pools[0].fetch.retry_reasons'", "unknown reason(s) ['bad_luck']", "not_found"]),
    "negative minimum image size": (_set("pools.0.fetch.min_image_size", -1),
                                    ["'pools[0].fetch.min_image_size'"]),
    "eval source repo not owner/name": (
        _set_eval_source("Flickr", repo="../../etc"),
        ["'eval_suites.datacomp.tasks[", "].source.repo'"]),
    "eval source asking to run the repo's loading script": (
        _set_eval_source("WinoGAViL", trust_remote_code=True),
        ["'eval_suites.datacomp.tasks[", "].source'", "trust_remote_code"]),
    "temperature a pool names that its captioner lacks": (
        _set("pools.2.temperatures", {"toy_captioner": [0.3]}), ["'pools[2].temperatures"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_MISTAKES))
def test_config_mistakes_name_the_key(case):
    mutate, fragments = CONFIG_MISTAKES[case]
    config = base_config()
    mutate(config)
    expect_error(config, *fragments)


#: Config files Snakemake would stop on with its own traceback: named here with the line.
BAD_CONFIG_FILES = {
    "not utf-8": (b"seed: 0\npools: caf\xe9\n", r"bad\.yaml, line 2: not UTF-8 text \(byte 0xe9\)"),
    "not yaml": (b"seed: 1\npools: [\n", r"bad\.yaml, line 3, column 1: not valid YAML"),
    "tab indentation": (b"pools:\n\t- name: x\n", r"bad\.yaml, line 2, column 1: not valid YAML"),
    "empty": (b"", r"bad\.yaml: is empty"),
    "a list at the top": (b"- seed\n- pools\n", r"the top level is a list, not a mapping"),
    "a scalar at the top": (b"just text\n", r"the top level is a str, not a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG_FILES))
def test_bad_config_files_are_named_with_their_line(tmp_path, case):
    from capmix.config import main

    content, expected = BAD_CONFIG_FILES[case]
    (tmp_path / "bad.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match=expected):
        pipeline_config(tmp_path / "bad.yaml")
    assert main(["check", str(tmp_path / "bad.yaml")]) == 2


def test_config_check_entry_point_accepts_the_shipped_configs(capsys):
    from capmix.config import main

    assert main(["check", str(REPO / "config" / "smoke.yaml")]) == 0
    assert "config OK" in capsys.readouterr().out
