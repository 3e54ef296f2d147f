"""A caption set's scores table from its chunks: the score_merge rule, without torch.

The score jobs (capmix.score) write one table per embed_images chunk; this module streams
them into the set's table and its summary. It is kept apart from capmix.score so that a
merge job does not import torch and open_clip (seconds per job, for a job that only joins
parquet files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from capmix.provenance import provenance_record, write_json
from capmix.shards import unified_schema

#: The columns of a scores table, in order.
SCORE_COLUMNS = ("uid", "n_captions", "cos", "cos_max", "cos_mean", "clip_s", "cos_all",
                 "missing")


class ScoreTally:
    """The summary's counts and means, added up table by table (a chunk at a time in
    score_merge), equal to those of the whole table at once up to the order of the sums.

    Same definitions as a whole table: scored = ``cos`` not NaN (an infinite cosine counts,
    so ``mean_cos`` is then infinite); ``mean_clip_s`` over scored rows whose CLIP-S is not
    NaN (pandas' ``mean`` skips NaN), NaN if there is none."""

    def __init__(self) -> None:
        self.n = self.n_scored = self.n_clip_s = 0
        self.sum_cos = self.sum_clip_s = 0.0
        self.missing: dict[str, int] = {}

    def add(self, frame: pd.DataFrame) -> None:
        """Count one table's rows (columns cos, clip_s, missing)."""
        cos = frame["cos"].to_numpy(dtype="float64")
        clip = frame["clip_s"].to_numpy(dtype="float64")
        scored = ~np.isnan(cos)
        with_clip = scored & ~np.isnan(clip)
        self.n += len(frame)
        self.n_scored += int(scored.sum())
        self.n_clip_s += int(with_clip.sum())
        self.sum_cos += float(cos[scored].sum())
        self.sum_clip_s += float(clip[with_clip].sum())
        for reason, count in frame["missing"].value_counts().items():
            self.missing[str(reason)] = self.missing.get(str(reason), 0) + int(count)

    def summary(self) -> dict[str, Any]:
        """n, n_scored, missing (reason -> rows, most first), mean_cos, mean_clip_s."""
        none = self.n_scored == 0
        return {
            "n": self.n, "n_scored": self.n_scored,
            "missing": dict(sorted(self.missing.items(), key=lambda kv: (-kv[1], kv[0]))),
            "mean_cos": None if none else self.sum_cos / self.n_scored,
            "mean_clip_s": None if none else (self.sum_clip_s / self.n_clip_s
                                              if self.n_clip_s else float("nan")),
        }


def set_tags(pool: str, scorer_name: str, caption_set: str,
             spec: Mapping[str, Any]) -> dict[str, Any]:
    """The key-value metadata of a caption set's scores table."""
    return {"pool": pool, "scorer": scorer_name, "caption_set": caption_set, "spec": dict(spec)}



def caption_set_shards(caption_set: str, set_manifest: Path) -> dict[str, Path]:
    """shard -> its caption parquet, from a caption set's manifest (rule caption_merge's, or
    raw_captions')."""
    manifest = json.loads(Path(set_manifest).read_text())
    return {entry["shard"]: Path(set_manifest).parent / entry["output"]
            for entry in manifest["shards"]}


def merge_scores(pool: str, scorer_name: str, caption_set: str, chunk_paths: Sequence[Path],
                 set_manifest: Path, out_path: Path, summary_path: Path) -> dict[str, Any]:
    """The score_merge rule: the chunks' tables streamed into the set's scores table (a row
    group per chunk, one chunk in memory at a time; a column all null in some chunks typed
    from the others) and its summary from running sums (:class:`ScoreTally`).

    Same columns, metadata (the chunks' scorer spec) and summary fields as one job scoring the
    whole set. The chunks must agree on the set's tags and cover the shards of the set's
    manifest exactly once: a shard no chunk scored, or two did, is an error naming it."""
    import pyarrow as pa

    if not chunk_paths:
        raise ValueError(f"score_merge {pool}/{scorer_name}/{caption_set}: no chunks")
    first = json.loads(pq.read_schema(chunk_paths[0]).metadata[b"capmix"])
    tags = set_tags(pool, scorer_name, caption_set, first["spec"])
    schema = unified_schema(chunk_paths, SCORE_COLUMNS).with_metadata(
        {b"capmix": json.dumps(tags, sort_keys=True).encode()})
    scored_by: dict[str, Path] = {}
    shipped: set[str | None] = set()
    tally = ScoreTally()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for path in chunk_paths:
                chunk_tags = json.loads(pq.read_schema(path).metadata[b"capmix"])
                if {k: chunk_tags.get(k) for k in tags} != tags:
                    raise ValueError(f"{path}: scored for {[chunk_tags.get(k) for k in tags]}, "
                                     f"not {list(tags.values())} like {chunk_paths[0]}")
                for shard in chunk_tags["shards"]:
                    if shard in scored_by:
                        raise ValueError(f"{caption_set}: shard {shard} is scored by two "
                                         f"chunks, {scored_by[shard]} and {path}")
                    scored_by[shard] = Path(path)
                shipped.add(chunk_tags.get("shipped_raw_score"))
                table = pq.read_table(path, columns=list(SCORE_COLUMNS))
                table = pa.Table.from_arrays(
                    [table.column(name).cast(schema.field(name).type) for name in SCORE_COLUMNS],
                    schema=schema)
                tally.add(table.select(["cos", "clip_s", "missing"]).to_pandas())
                if table.num_rows:
                    writer.write_table(table, row_group_size=table.num_rows)
        listed = caption_set_shards(caption_set, set_manifest)
        unscored = sorted(set(listed) - set(scored_by))
        stray = sorted(set(scored_by) - set(listed))
        if unscored:
            raise ValueError(f"{len(unscored)} shard(s) of the set no chunk scored, e.g. "
                             f"{unscored[:3]}")
        if stray:
            raise ValueError(f"{len(stray)} shard(s) scored that the set does not list, e.g. "
                             f"{stray[:3]}")
        if len(shipped) > 1:
            raise ValueError(f"chunks disagree on the shipped score: {sorted(map(str, shipped))}")
    except ValueError as error:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"score_merge {pool}/{scorer_name}/{caption_set} ({set_manifest}): "
                         f"{error}") from error
    os.replace(tmp, out_path)
    summary = {
        "pool": pool, "scorer": scorer_name, "caption_set": caption_set, **tally.summary(),
        "shipped_raw_score": next(iter(shipped)),
        "provenance": provenance_record("score_merge", inputs=[set_manifest, *chunk_paths],
                                        params={"spec": first["spec"]},
                                        packages=("torch", "open_clip_torch", "pyarrow")),
    }
    write_json(summary_path, summary)
    return summary
