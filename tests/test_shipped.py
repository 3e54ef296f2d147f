"""Captions a source ships in its metadata (capmix.shipped), and LAION-COCO: its parquet in
the real format, its shipped BLIP captions as a caption set, and its Figure 13 config."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capmix.caption import caption_shipped
from capmix.config import pipeline_config
from capmix.shipped import (
    SCORE_COLUMN,
    join_shipped,
    required_columns,
    shipped_score,
    temperature_problems,
)
from capmix.sources import MetadataError, build_metadata, metadata_parts, source_files
from capmix.uids import derive_uid
from tests.conftest import REPO, copy_workflow
from tests.test_workflow import job_stats, snakemake

#: LAION-COCO's parquet schema, as its dataset card lists it (column names and types).
LAION_COCO_SCHEMA = pa.schema([
    ("URL", pa.string()), ("TEXT", pa.string()), ("top_caption", pa.string()),
    ("all_captions", pa.list_(pa.string())), ("all_similarities", pa.list_(pa.float64())),
    ("WIDTH", pa.int64()), ("HEIGHT", pa.int64()), ("similarity", pa.float64()),
    ("hash", pa.int64()), ("pwatermark", pa.float64()), ("punsafe", pa.float64()),
])


def laion_coco_rows(start: int, n: int, url=lambda i: f"https://img.example/{i}.jpg"):
    rows = []
    for i in range(start, start + n):
        captions = [f"a photo of thing {i}", f"thing {i} on a table", f"a blurry thing {i}"]
        similarities = [0.31 + i / 1000, 0.29, 0.25]
        rows.append({"URL": url(i), "TEXT": f"Thing {i} | buy now", "top_caption": captions[0],
                     "all_captions": captions, "all_similarities": similarities,
                     "WIDTH": 640, "HEIGHT": 480, "similarity": 0.33, "hash": -1234567 * i,
                     "pwatermark": 0.1, "punsafe": 0.01})
    return rows


def write_laion_coco(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=LAION_COCO_SCHEMA), path)
    return path


def laion_coco_source(folder: Path) -> dict:
    """The shipped config's source, pointed at a test folder."""
    source = copy.deepcopy(pipeline_config(REPO / "config" / "laion_coco.yaml")["pools"][0]
                           ["source"])
    source["path"] = str(folder)
    return source


def test_laion_coco_parquet_folder_becomes_metadata_with_its_columns(tmp_path):
    """Two LAION-COCO parquet files in a folder: one metadata part each, uids derived from
    URL + TEXT, every shipped column kept with its type (lists stay lists)."""
    folder = tmp_path / "laion_coco"
    write_laion_coco(folder / "part-00001.parquet", laion_coco_rows(3, 2))
    write_laion_coco(folder / "part-00000.parquet", laion_coco_rows(0, 3))
    source = laion_coco_source(folder)
    files = source_files(source, [folder])
    assert [f.path.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    manifest = build_metadata("laion_coco", source, files, tmp_path / "metadata")
    assert manifest["rows"] == 5 and manifest["uid_derived"]
    table = pd.concat([pd.read_parquet(p) for p in metadata_parts(tmp_path / "metadata")])
    assert list(table.columns[:3]) == ["uid", "url", "text"]
    assert table["uid"].iloc[0] == derive_uid("https://img.example/0.jpg", "Thing 0 | buy now")
    assert table["text"].iloc[4] == "Thing 4 | buy now"
    assert list(table["all_captions"].iloc[1]) == ["a photo of thing 1", "thing 1 on a table",
                                                   "a blurry thing 1"]
    schema = pq.read_schema(metadata_parts(tmp_path / "metadata")[0])
    assert schema.field("all_similarities").type == pa.list_(pa.float64())
    assert schema.field("hash").type == pa.int64()
    # the shipped BLIP caption and its score (the largest of all_similarities) join by uid
    found, report = join_shipped(list(table["uid"]), metadata_parts(tmp_path / "metadata"),
                                 {"column": "top_caption", "score_column": "all_similarities"})
    caption, score = found[table["uid"].iloc[2]]
    assert caption == "a photo of thing 2" and score == pytest.approx(0.312)
    assert report["n_joined"] == 5 and report["n_without_caption"] == 0


def test_a_folder_of_parts_needs_a_declared_format(tmp_path):
    folder = tmp_path / "parts"
    write_laion_coco(folder / "a.parquet", laion_coco_rows(0, 1))
    with pytest.raises(MetadataError, match="cannot tell the table format"):
        source_files({"type": "table", "path": str(folder), "format": "auto"}, [folder])
    with pytest.raises(MetadataError, match="holds no csv file"):
        source_files({"type": "table", "path": str(folder), "format": "csv"}, [folder])


def test_a_shipped_column_the_source_drops_stops_the_metadata_stage(tmp_path):
    """The metadata stage checks the columns a pool's shipped captioners read (the Snakefile
    passes required_columns as `required`), before anything is fetched."""
    folder = tmp_path / "laion_coco"
    write_laion_coco(folder / "part-00000.parquet", laion_coco_rows(0, 2))
    source = laion_coco_source(folder)
    source["keep_columns"] = ["similarity"]
    captioners = {"blip": {"backend": "shipped", "column": "top_caption",
                           "score_column": "all_similarities", "temperatures": [1.0]},
                  "blip2": {"backend": "hf_blip2", "model": "x"}}
    required = required_columns(0, {"captioners": ["blip", "blip2"]}, captioners)
    assert required == {"captioners.blip.column (pools[0])": "top_caption",
                        "captioners.blip.score_column (pools[0])": "all_similarities"}
    with pytest.raises(MetadataError, match=r"captioners\.blip\.column.*does not keep"):
        build_metadata("laion_coco", source, source_files(source, [folder]),
                       tmp_path / "metadata", required=required)
    assert not (tmp_path / "metadata").exists()


def test_a_shipped_captioner_has_one_nominal_temperature():
    config = {"captioners": {"ok": {"backend": "shipped", "column": "c", "temperatures": [1.0]},
                             "two": {"backend": "shipped", "column": "c",
                                     "temperatures": [0.75, 1.0]}}}
    problems = temperature_problems(config)
    assert len(problems) == 1 and "captioners.two.temperatures" in problems[0]


def test_shipped_score_of_a_list_is_its_largest():
    assert shipped_score([0.2, None, 0.31]) == pytest.approx(0.31)
    assert shipped_score([]) is None and shipped_score(None) is None
    assert shipped_score(0.5) == 0.5


def test_shipped_captions_become_a_caption_set_in_the_shard_layout(fetched_pool):
    """caption_shipped joins the fetched uids to the metadata column: one parquet per shard,
    the caption and its shipped score; a uid whose caption is null is kept and counted."""
    base = pd.read_parquet(metadata_parts(fetched_pool / "metadata")[0])
    rows = [{"uid": u, "URL": url, "TEXT": t,
             "top_caption": None if i == 4 else f"blip says {i}",
             "all_similarities": [0.2, 0.3 + i / 100]}
            for i, (u, url, t) in enumerate(zip(base["uid"], base["url"], base["text"],
                                                strict=True))]
    table = fetched_pool / "shipped.parquet"
    pd.DataFrame(rows).to_parquet(table, index=False)
    source = {"type": "table", "path": str(table), "format": "parquet", "allow_local_urls": True,
              "columns": {"uid": "uid", "url": "URL", "text": "TEXT"},
              "keep_columns": ["top_caption", "all_similarities"]}
    build_metadata("p", source, source_files(source, [table]), fetched_pool / "meta_shipped")
    out = fetched_pool / "captions" / "blip" / "1.0"
    spec = {"backend": "shipped", "column": "top_caption", "score_column": "all_similarities"}
    manifest = caption_shipped("p", "blip", spec, 1.0, fetched_pool / "index.parquet",
                               fetched_pool / "shards", out, out / "manifest.json",
                               metadata_dir=fetched_pool / "meta_shipped")
    assert manifest["n_images"] == 12 and manifest["n_captioned"] == 11
    assert manifest["failures"] == {"no_shipped_caption": 1}
    assert manifest["join"]["examples_without_caption"] == [base["uid"][4]]
    frame = pd.concat(pd.read_parquet(out / s["output"]) for s in manifest["shards"])
    assert len(manifest["shards"]) == 4
    frame = frame.set_index("uid")
    assert frame.loc[base["uid"][7], "caption"] == "blip says 7"
    assert list(frame.loc[base["uid"][7], "captions"]) == ["blip says 7"]
    assert frame.loc[base["uid"][7], SCORE_COLUMN] == pytest.approx(0.37)
    assert frame.loc[base["uid"][4], "status"] == "no_shipped_caption"
    assert pd.isna(frame.loc[base["uid"][4], "caption"])


def test_laion_coco_config_dry_runs_figure_13(tmp_path):
    """config/laion_coco.yaml plans Figure 13's five CLIPs on a LAION-COCO folder: the shipped
    BLIP set needs no model (no weights, a metadata input), BLIP2 its weights."""
    workdir = copy_workflow(tmp_path / "wf")
    write_laion_coco(workdir / "data" / "laion_coco" / "part-00000.parquet",
                     laion_coco_rows(0, 4))
    result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "config/laion_coco.yaml")
    assert result.returncode == 0, result.stderr + result.stdout
    stats = job_stats(result.stdout)
    assert stats["train"] == 5 and stats["evaluate"] == 5 and stats["subset"] == 5
    # 128 caption jobs per set: BLIP2 at 0.75 and the shipped BLIP set
    assert stats["caption"] == 2 * 128
    assert stats["model_weights"] == 2  # BLIP2 and the ViT-L/14 scorer, not the shipped set
    out = result.stdout
    assert "results/laion_coco/captions/laion_coco_blip/1.0/" in out
    assert "shipped in the source's metadata" in result.stderr
    # Figure 13 (bars) and its table are drawn from the five models' evaluations
    assert stats["draw_figures"] == 1 and stats["analyses"] == 1
    (draw,) = [block for block in re.split(r"\n(?=\[)", out) if "rule draw_figures:" in block]
    for strategy in ("raw_no_filter", "shipped_no_filter", "synthetic_no_filter",
                     "synthetic_min_0p28", "raw_min_0p28"):
        assert f"results/laion_coco/eval/{strategy}.aggregate.json" in draw, strategy


def test_shipped_caption_jobs_ask_for_no_gpu_under_the_slurm_profile(tmp_path):
    """A shipped caption set only joins a metadata column: under the SLURM profile its caption
    jobs ask for config `resources.caption_shipped` (no GPU, the CPU job's memory and
    runtime), while the BLIP2 jobs of the same rule keep `resources.caption`'s GPU."""
    workdir = copy_workflow(tmp_path / "wf", extra=("slurm",))
    write_laion_coco(workdir / "data" / "laion_coco" / "part-00000.parquet",
                     laion_coco_rows(0, 4))
    # the two caption sets' jobs (not the whole DAG: kept short)
    result = snakemake(workdir, *[f"results/laion_coco/captions/{name}/manifest.json"
                                  for name in ("laion_coco_blip/1.0", "blip2_opt_2.7b/0.75")],
                       "-n", "--profile", "slurm", "--configfile", "config/laion_coco.yaml")
    assert result.returncode == 0, result.stderr + result.stdout
    config = pipeline_config(REPO / "config" / "laion_coco.yaml")
    asked: dict[str, set[tuple[str, ...]]] = {}
    for block in re.split(r"\n(?=\[)", result.stdout):
        if "rule caption:" not in block:
            continue
        captioner = re.search(r"captioner=([\w.]+)", block).group(1)
        resources = dict(re.findall(r"(\w+)=([^,\s]+)", block.split("resources:")[1]))
        asked.setdefault(captioner, set()).add(
            tuple(resources[key] for key in ("gpu", "mem_mb", "runtime")))
    shipped, model = config["resources"]["caption_shipped"], config["resources"]["caption"]
    assert shipped["gpus"] == 0 and model["gpus"] == 1
    assert asked == {
        "laion_coco_blip": {("0", str(shipped["mem_mb"]), str(shipped["runtime"]))},
        "blip2_opt_2.7b": {("1", str(model["mem_mb"]), str(model["runtime"]))}}
