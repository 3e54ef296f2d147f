"""Model weights fetched once into a shared cache, GPU jobs loading offline (capmix.weights).

No network: the Hub is a stand-in (:class:`FakeHub`) that serves local folders and writes the
real hub cache layout (``models--org--name/snapshots/<commit>/...`` + ``refs/main``); the
models are the tiny random ones of ``tests/tiny_models.py``. The offline loads run with the
libraries' own offline switches turned *off* and every socket refused, so that only capmix's
explicit ``local_files_only`` / cached-file lookup can make them pass.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from capmix.captioners import BACKENDS, CaptionerLoadError, load_captioner
from capmix.provenance import sha256_file
from capmix.score import ScorerLoadError, load_scorer
from capmix.weights import (
    CACHE_KEY,
    HF_BACKENDS,
    OPEN_CLIP_BACKENDS,
    RULE,
    WeightsSource,
    fetch_weights,
    hf_patterns,
    offline_hub,
    weights_problems,
    weights_source,
)
from tests.tiny_models import make_tiny_blip, make_tiny_clip, tiny_clip_builtin_config

BLIP_REPO = "capmix-test/tiny-blip"
CLIP_REPO = "capmix-test/tiny-clip"
CLIP_NAME, CLIP_TAG = "capmix-tiny-clip", "capmix_quickgelu"
TAG_MEAN, TAG_STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)


def commit_of(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()  # a 40-hex commit id


def snapshot_dir(cache_dir: Path, repo_id: str) -> Path:
    """Where the hub cache keeps ``repo_id``'s files at its commit; refs/main names it."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit_of(repo_id))
    return repo / "snapshots" / commit_of(repo_id)


class FakeHub:
    """The Hub's download functions over local folders (repo id -> folder), writing what they
    fetch in the real cache layout, and recording each call."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = repos
        self.calls: list[tuple[str, str]] = []

    def list_repo_files(self, repo_id: str, revision: str | None = None) -> list[str]:
        source = self.repos[repo_id]
        return sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())

    def _copy(self, repo_id: str, filename: str, cache_dir: str) -> Path:
        target = snapshot_dir(Path(cache_dir), repo_id) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.repos[repo_id] / filename, target)
        return target

    def snapshot_download(self, repo_id: str, *, cache_dir: str, allow_patterns=None,
                          ignore_patterns=None, **_) -> str:
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(("snapshot_download", repo_id))
        for name in filter_repo_objects(self.list_repo_files(repo_id),
                                        allow_patterns=allow_patterns,
                                        ignore_patterns=ignore_patterns):
            self._copy(repo_id, name, cache_dir)
        return str(snapshot_dir(Path(cache_dir), repo_id))

    def hf_hub_download(self, repo_id: str, filename: str, *, cache_dir: str, **_) -> str:
        from huggingface_hub.errors import EntryNotFoundError

        self.calls.append(("hf_hub_download", f"{repo_id}/{filename}"))
        if filename not in self.list_repo_files(repo_id):
            raise EntryNotFoundError(f"{repo_id} has no {filename}")
        return str(self._copy(repo_id, filename, cache_dir))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every connection refused and recorded; the libraries' own offline modes (which the
    test session sets) off, so that nothing but capmix's explicit arguments keeps a load local."""
    import huggingface_hub.constants
    import transformers.utils.hub

    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", False)
    return attempts


@pytest.fixture(scope="module")
def blip_repo(tmp_path_factory) -> Path:
    """The tiny BLIP as its Hub repo would hold it: safetensors, and PyTorch/TF twins."""
    directory = make_tiny_blip(tmp_path_factory.mktemp("hub") / "tiny-blip")
    (directory / "pytorch_model.bin").write_bytes(b"the same weights, pickled")
    (directory / "tf_model.h5").write_bytes(b"the same weights, for TensorFlow")
    return directory


@pytest.fixture
def tiny_clip_tag(tmp_path, monkeypatch) -> Path:
    """A tiny CLIP registered as a built-in open_clip model with a pretrained tag published on
    the (fake) Hub, trained - its record says - with QuickGELU; returns the repo folder, which
    holds open_clip's two file names (open_clip prefers the safetensors one)."""
    import open_clip

    directory = make_tiny_clip(tmp_path / "tiny-clip")
    shutil.copyfile(directory / "open_clip_model.safetensors",
                    directory / "open_clip_pytorch_model.bin")
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, CLIP_NAME,
                        tiny_clip_builtin_config(directory))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, CLIP_NAME, {CLIP_TAG: {
        "url": "", "hf_hub": f"{CLIP_REPO}/", "quick_gelu": True, "mean": TAG_MEAN,
        "std": TAG_STD, "interpolation": "bicubic", "resize_mode": "shortest"}})
    return directory


def blip_spec(cache_dir: Path | None = None, **extra) -> dict:
    spec = {"backend": "hf_blip", "model": BLIP_REPO, "pretrained": None, "name": "tiny_blip",
            **extra}
    return {**spec, CACHE_KEY: str(cache_dir)} if cache_dir is not None else spec


def clip_spec(cache_dir: Path | None = None) -> dict:
    spec = {"backend": "open_clip", "model": CLIP_NAME, "pretrained": CLIP_TAG}
    return {**spec, CACHE_KEY: str(cache_dir)} if cache_dir is not None else spec


def short_decoding():
    from capmix.captioners import Decoding

    return Decoding(max_length=8)


# ------------------------------------------------------------------ what a spec needs


@pytest.mark.parametrize(("spec", "expected"), [
    ({"backend": "hf_blip2", "model": "Salesforce/blip2-opt-2.7b"},
     WeightsSource("hf", "Salesforce/blip2-opt-2.7b")),
    ({"backend": "open_clip", "model": "ViT-L-14", "pretrained": "openai"},
     WeightsSource("open_clip", "ViT-L-14", "openai")),
    ({"backend": "open_clip_coca", "model": "coca_ViT-L-14", "pretrained": "laion2b_s13b_b90k"},
     WeightsSource("open_clip", "coca_ViT-L-14", "laion2b_s13b_b90k")),
    ({"backend": "hf_blip", "model": "/models/blip"}, None),  # a local directory
    ({"backend": "hf_blip", "model": "./blip"}, None),
    ({"backend": "open_clip", "model": "local-dir:/models/clip"}, None),
    ({"backend": "open_clip", "model": "ViT-B-32", "pretrained": "/ckpt/epoch_32.pt"}, None),
    ({"backend": "open_clip", "model": "ViT-B-32", "pretrained": None}, None),
    ({"backend": "open_clip_coca", "toy_model": "captioner"}, None),
    ({"backend": "open_clip", "toy_model": "scorer", "model": "ViT-L-14",
      "pretrained": "openai"}, None),
    ({"backend": "released", "repo": "thaottn/DataComp_medium_pool_BLIP2_captions"}, None),
])
def test_which_weights_a_spec_needs(spec, expected):
    assert weights_source(spec) == expected


def test_an_hf_hub_open_clip_model_is_a_config_error_naming_the_key():
    config = {"scorers": {"s": {"backend": "open_clip", "model": "hf-hub:org/clip"}}}
    with pytest.raises(ValueError, match="hf-hub:"):
        weights_source(config["scorers"]["s"])
    [problem] = weights_problems(config)
    assert problem.startswith("config key 'scorers.s.model': ") and "local-dir:" in problem


def test_the_loader_families_are_the_schemas_model_backends():
    from capmix.config import load_schema

    scorer_enum = load_schema()["$defs"]["scorer"]["properties"]["backend"]["enum"]
    assert sorted((*HF_BACKENDS, *OPEN_CLIP_BACKENDS)) == sorted((*BACKENDS, *scorer_enum))


def test_safetensors_are_taken_without_their_pytorch_twins():
    allow, ignore = hf_patterns(["config.json", "model.safetensors", "pytorch_model.bin"])
    assert "*.safetensors" in allow and "*.bin" not in allow and "*.bin.index.json" in ignore
    allow, ignore = hf_patterns(["config.json", "pytorch_model.bin"])
    assert "*.bin" in allow and "*.safetensors" not in allow and ignore == []


# ------------------------------------------------------------------------------ fetching


def test_fetch_writes_the_cache_and_a_record_then_loads_offline(blip_repo, tmp_path,
                                                                no_network):
    """rule model_weights for a transformers captioner, then its GPU job: from the cache."""
    hub = FakeHub({BLIP_REPO: blip_repo})
    cache = tmp_path / "cache"
    record_path = cache / "capmix" / "captioners" / "tiny_blip.json"
    record = fetch_weights("captioners", "tiny_blip", blip_spec(), cache, record_path, hub=hub)
    assert hub.calls == [("snapshot_download", BLIP_REPO)]
    assert record_path.is_file() and record["revision"] == commit_of(BLIP_REPO)
    assert record["model"] == BLIP_REPO and record["provenance"]["stage"] == RULE
    names = {Path(f["path"]).name for f in record["files"]}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert not names & {"pytorch_model.bin", "tf_model.h5"}  # one weights format only
    for entry in record["files"]:
        assert sha256_file(cache / entry["path"]) == entry["sha256"]
        assert (cache / entry["path"]).stat().st_size == entry["bytes"]
    captioner = load_captioner(blip_spec(cache))
    assert type(captioner.model).__name__ == "BlipForConditionalGeneration"
    assert no_network == []


def test_fetch_of_an_open_clip_tag_uses_open_clips_download(tiny_clip_tag, tmp_path,
                                                            monkeypatch, no_network):
    """open_clip's own download_pretrained places the file; the job's offline load finds it,
    with the tag's activation and preprocessing."""
    import open_clip
    from safetensors.torch import load_file

    hub = FakeHub({CLIP_REPO: tiny_clip_tag})
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", hub.hf_hub_download)
    cache = tmp_path / "cache"
    record = fetch_weights("scorers", "tiny", clip_spec(), cache,
                           cache / "capmix" / "scorers" / "tiny.json")
    [entry] = record["files"]
    assert Path(entry["path"]).name == "open_clip_model.safetensors"  # open_clip's preference
    assert record["revision"] == commit_of(CLIP_REPO) and record["quick_gelu"] is True
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", None)  # no download at load
    scorer = load_scorer("tiny", clip_spec(cache))
    assert {type(m).__name__ for m in scorer.model.modules()
            if "GELU" in type(m).__name__} == {"QuickGELU"}
    saved = load_file(str(tiny_clip_tag / "open_clip_model.safetensors"))
    assert all(torch.equal(scorer.model.state_dict()[k], v) for k, v in saved.items())
    normalize = next(t for t in scorer.preprocess.transforms if type(t).__name__ == "Normalize")
    assert tuple(normalize.mean) == TAG_MEAN and tuple(normalize.std) == TAG_STD
    assert no_network == []


def test_fetch_refuses_a_spec_with_nothing_to_fetch(tmp_path):
    with pytest.raises(ValueError, match="captioner 'toy': loads nothing from the Hub"):
        fetch_weights("captioners", "toy", {"backend": "open_clip_coca", "toy_model": "captioner"},
                      tmp_path, tmp_path / "r.json", hub=FakeHub({}))


def test_fetch_names_an_unknown_open_clip_tag(tmp_path):
    spec = {"backend": "open_clip", "model": "ViT-L-14", "pretrained": "no_such_tag"}
    with pytest.raises(ValueError, match="scorer 's': 'no_such_tag' is not a pretrained tag"):
        fetch_weights("scorers", "s", spec, tmp_path, tmp_path / "r.json")


# ----------------------------------------------------------------------- offline loading


def test_a_blip_saved_in_the_hub_cache_layout_loads_offline(tmp_path, no_network):
    cache = tmp_path / "cache"
    make_tiny_blip(snapshot_dir(cache, BLIP_REPO))  # save_pretrained into the snapshot
    captioner = load_captioner(blip_spec(cache))
    assert len(captioner.generate(torch.zeros(1, 3, 32, 32), short_decoding(), seed=0)[0]) == 1
    assert no_network == []


def test_a_model_missing_from_the_cache_names_captioner_model_cache_and_rule(tmp_path,
                                                                            no_network):
    cache = tmp_path / "empty_cache"
    with pytest.raises(CaptionerLoadError) as error:
        load_captioner(blip_spec(cache))
    message = str(error.value)
    for part in ("captioner 'tiny_blip'", BLIP_REPO, str(cache), f"rule {RULE}"):
        assert part in message, part
    assert no_network == []


def test_an_open_clip_tag_missing_from_the_cache_names_scorer_tag_cache_and_rule(
        tiny_clip_tag, tmp_path, no_network):
    cache = tmp_path / "empty_cache"
    with pytest.raises(ScorerLoadError) as error:
        load_scorer("tiny", clip_spec(cache))
    message = str(error.value)
    for part in ("scorer 'tiny'", CLIP_NAME, CLIP_TAG, CLIP_REPO, str(cache), f"rule {RULE}"):
        assert part in message, part
    assert no_network == []


def test_a_gpu_job_switches_the_hub_off_on_the_cache(tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.setenv(name, "unset")  # restored after the test
    offline_hub(tmp_path / "cache")
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_HUB_CACHE"] == str((tmp_path / "cache").resolve())


def test_a_tag_published_by_url_is_found_where_open_clip_downloads_it(tmp_path):
    """open_clip's download_pretrained_from_url writes {cache_dir}/{file name}."""
    from capmix.weights import WeightsNotCached, cached_open_clip_file

    tag = {"url": "https://example.org/clip/abc123/ViT-X.pt", "hf_hub": ""}
    with pytest.raises(WeightsNotCached, match="ViT-X.pt"):
        cached_open_clip_file("ViT-X", "t", tag, tmp_path)
    (tmp_path / "ViT-X.pt").write_bytes(b"weights")
    assert cached_open_clip_file("ViT-X", "t", tag, tmp_path) == str(tmp_path / "ViT-X.pt")
