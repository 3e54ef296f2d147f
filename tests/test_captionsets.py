"""Which caption sets a pool runs (capmix.captionsets), and the checks on pool temperatures."""

from capmix.captionsets import (
    caption_set_name,
    pool_caption_sets,
    pool_temperatures,
    temperature_problems,
)
from capmix.strategies import source_caption_sets

CAPTIONERS = {"cap": {"temperatures": [0.5, 0.75, 1, 1.5]}, "coco": {"temperatures": [0.75]}}


def test_a_pool_runs_all_temperatures_or_its_subset():
    pool = {"name": "p", "captioners": ["cap", "coco"]}
    assert pool_caption_sets(CAPTIONERS, pool) == [
        "raw", "cap/0.5", "cap/0.75", "cap/1.0", "cap/1.5", "coco/0.75"]
    narrowed = {**pool, "temperatures": {"cap": [0.75]}}
    assert pool_caption_sets(CAPTIONERS, narrowed) == ["raw", "cap/0.75", "coco/0.75"]
    assert pool_temperatures(CAPTIONERS, narrowed, "coco") == [0.75]
    assert caption_set_name("cap", 1) == "cap/1.0"
    # "best" reads what the pool captions, not every temperature of the captioner
    assert source_caption_sets("cap/best", CAPTIONERS, narrowed) == ["cap/0.75"]


def test_pool_temperatures_are_checked_naming_the_key():
    config = {"captioners": CAPTIONERS, "pools": [
        {"name": "p", "captioners": ["cap"], "temperatures": {"cap": [0.8], "coco": [0.75]}}]}
    problems = temperature_problems(config)
    assert any("pools[0].temperatures.cap" in p and "no temperature 0.8" in p for p in problems)
    assert any("pools[0].temperatures.coco" in p and "not a captioner of pool 'p'" in p
               for p in problems)
    config["pools"][0]["temperatures"] = {"cap": [1.0]}
    assert temperature_problems(config) == []
