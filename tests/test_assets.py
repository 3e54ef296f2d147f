"""Published files (config/assets.yaml): named in a pool as asset:NAME, fetched once by the
download_asset stage and refused unless their SHA-256 is the recorded one."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from capmix.assets import AssetError, download_asset
from capmix.assetspec import asset_files, asset_problems, resolve_file
from capmix.config import ConfigError, pipeline_config
from tests.conftest import REPO

DATACOMP_ASSETS = {f"in1k_clip_vit_l14_{i}" for i in range(5)} | {
    f"{scale}_centroids" for scale in ("small", "medium", "large", "xlarge")} | {
    "fasttext_lid_176"}


def test_the_catalogue_has_datacomps_image_based_inputs():
    config = pipeline_config()
    assert set(config["assets"]["files"]) == DATACOMP_ASSETS
    assert resolve_file(config, "asset:small_centroids") == "results/assets/small_centroids.pt"
    assert resolve_file(config, "asset:fasttext_lid_176") == "results/assets/lid.176.bin"
    assert resolve_file(config, "data/mine.pt") == "data/mine.pt"
    assert asset_files(config)["lid.176.bin"] == "fasttext_lid_176"
    # DataComp's URL and checksum of its small centroids (baselines/utils.py)
    spec = config["assets"]["files"]["small_centroids"]
    assert spec["url"].endswith("/v0.1.0-alpha/small_centroids_l14.pt")
    assert spec["sha256"] == "23c66a05e49ad77283c1e2b33355c7eb088ac332a944c97ff85d5dfd48a5b251"


@pytest.mark.parametrize("scale", ["small", "medium", "large", "xlarge"])
def test_datacomp_configs_name_datacomps_files(scale):
    config = pipeline_config(REPO / "config" / f"datacomp_{scale}.yaml")
    mix = config["pools"][0]["mix"]
    clusters = mix["image_clusters"]
    assert clusters["centroids"] == f"asset:{scale}_centroids"
    assert clusters["reference_embeddings"] == [f"asset:in1k_clip_vit_l14_{i}" for i in range(5)]
    assert mix["language_id"] == {"backend": "fasttext", "model": "asset:fasttext_lid_176"}
    assert "raw_top_in1k_datacomp" in mix["strategies"]


def test_two_assets_in_one_file_and_unknown_assets_are_named():
    config = pipeline_config()
    files = dict(config["assets"]["files"])
    files["copy"] = {**files["small_centroids"]}
    assert asset_problems({"assets": {"files": files}}) == [
        "config key 'assets.files.small_centroids.file': 'small_centroids.pt' is also the file "
        "of asset 'copy'"]
    pools = config["pools"]
    pools[0]["mix"]["image_clusters"] = {"reference_embeddings": ["asset:in1k_clip_vit_l14_9"],
                                         "centroids": "asset:small_centroids"}
    with pytest.raises(ConfigError, match=r"reference_embeddings\[0\]': unknown asset "
                                          r"'in1k_clip_vit_l14_9'"):
        pipeline_config(overrides={"pools": pools})


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server for tmp_path/www, stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_an_asset_is_fetched_and_checked(server, tmp_path):
    root, base = server
    body = b"centroids" * 1000
    (root / "c.pt").write_bytes(body)
    good = {"url": f"{base}/c.pt", "sha256": hashlib.sha256(body).hexdigest()}
    out = tmp_path / "assets" / "c.pt"
    record = download_asset("c", good, out, timeout=10)
    assert out.read_bytes() == body and record["bytes"] == len(body)
    assert record["sha256"] == good["sha256"]
    # A file whose checksum is not the recorded one never lands (nor does a part file).
    bad = {**good, "sha256": "0" * 64}
    with pytest.raises(AssetError, match="has SHA-256 .* but the config records 0000"):
        download_asset("c", bad, tmp_path / "assets" / "bad.pt", timeout=10)
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == ["c.pt"]
    with pytest.raises(AssetError, match="cannot download"):
        download_asset("c", {**good, "url": f"{base}/missing.pt"}, tmp_path / "m.pt", timeout=10)
    assert not Path(tmp_path / "m.pt").exists() and not Path(tmp_path / "m.pt.part").exists()
    with pytest.raises(AssetError, match="only http"):
        download_asset("c", {**good, "url": "file:///etc/passwd"}, tmp_path / "f.pt")
