"""The mix table in uid-range parts (capmix.mixparts): the same table, the same subsets.

A pool of random uids with two caption sets (several caption shards each), image clusters and
caption languages is mixed whole (one part) and in parts; the concatenated parts must be the
whole table, and every strategy of the Table 5 families (and the others that read clusters,
text filters, "same threshold" and "best") must give bit-identical uid files, the same
samples and the same summary. Scores are rounded to two decimals so that thresholds fall on
heavy ties.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from capmix.config import pipeline_config
from capmix.mix import (
    CAPTION_TEXT_COLUMNS,
    CLUSTER_COLUMN,
    ScoreTableError,
    score_column,
)
from capmix.mixparts import (
    MetadataColumnError,
    MixInputs,
    build_table,
    part_files,
    read_table,
    run_metadata_column,
    run_subset,
    scatter_rows,
    uid_parts,
)
from capmix.strategies import expand_strategies, parse_strategy
from capmix.thresholds import datacomp_threshold

N = 600
POOL = {"name": "p", "mix": {"sources": {"synthetic": "cap/0.75"}}}


def random_uids(n: int, rng: np.random.Generator) -> list[str]:
    words = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64,
                         endpoint=True)
    return [f"{int(h):016x}{int(lo):016x}" for h, lo in words]


def write_pool(root, seed=0, n=N):
    """Index, two caption sets in 3 caption shards each, clusters and caption languages."""
    rng = np.random.default_rng(seed)
    uids = random_uids(n, rng)
    status = np.where(rng.random(n) < 0.9, "fetched", "failed")
    shard = [f"round_0/{i % 37:05d}.tar" if s == "fetched" else None
             for i, s in enumerate(status)]
    pd.DataFrame({"uid": uids, "status": status, "shard": shard}).to_parquet(
        root / "index.parquet")
    fetched = [u for u, s in zip(uids, status, strict=True) if s == "fetched"]
    score_paths, manifests = {}, {}
    for name, centre in (("raw", 0.25), ("cap/0.75", 0.3)):
        folder = root / name.replace("/", "_")
        folder.mkdir()
        scores = np.round(rng.normal(centre, 0.05, len(fetched)), 2)  # heavy ties
        pd.DataFrame({"uid": fetched, "cos": scores, "cos_all": [[s] for s in scores],
                      "missing": [None] * len(fetched)}).to_parquet(folder / "scores.parquet")
        shards = []
        for k, rows in enumerate(np.array_split(np.arange(len(fetched)), 3)):
            captions = [[f"{name} caption {i}"] for i in rows]
            pd.DataFrame({"uid": [fetched[i] for i in rows], "captions": captions,
                          "status": "ok"}).to_parquet(folder / f"{k}.parquet")
            shards.append({"output": f"{k}.parquet"})
        (folder / "manifest.json").write_text(json.dumps({"shards": shards}))
        score_paths[name] = folder / "scores.parquet"
        manifests[name] = [folder / "manifest.json"]
    pd.DataFrame({"uid": fetched, CLUSTER_COLUMN: rng.random(len(fetched)) < 0.4}).to_parquet(
        root / "clusters.parquet")
    pd.DataFrame({"uid": fetched,
                  CAPTION_TEXT_COLUMNS[0]: rng.choice(["en", "de"], len(fetched), p=[.8, .2]),
                  CAPTION_TEXT_COLUMNS[1]: rng.integers(1, 8, len(fetched)),
                  CAPTION_TEXT_COLUMNS[2]: rng.integers(3, 40, len(fetched))}).to_parquet(
        root / "language.parquet")
    return score_paths, manifests


def mix(root, n_parts, score_paths, manifests):
    out = root / f"table_{n_parts}.json"
    inputs = MixInputs.from_manifests(root / "index.parquet", score_paths, manifests,
                                      clusters=root / "clusters.parquet",
                                      caption_text=root / "language.parquet")
    report = build_table("p", {"raw": ["raw"], "cap/0.75": ["cap/0.75"]}, inputs, out,
                         n_parts=n_parts)
    return out, report


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    score_paths, manifests = write_pool(root)
    whole, whole_report = mix(root, 1, score_paths, manifests)
    parted, parted_report = mix(root, 7, score_paths, manifests)
    return root, whole, whole_report, parted, parted_report


def test_uid_parts_are_ordered_ranges_of_even_size():
    uids = sorted(random_uids(20_000, np.random.default_rng(1)))
    parts = uid_parts(uids, 16)
    assert (np.diff(parts) >= 0).all()  # uid order is part order
    counts = np.bincount(parts, minlength=16)
    assert counts.min() > 1000 and counts.max() < 1500  # 1,250 each on average
    assert uid_parts(["ffffffff" + "0" * 24, "0" * 32], 3).tolist() == [2, 0]
    with pytest.raises(ValueError, match="'0000XYZ0.*row 1"):
        uid_parts(["0" * 32, "0000XYZ0" + "0" * 24], 4)


def test_parts_concatenated_are_the_whole_table(tables):
    root, whole, whole_report, parted, parted_report = tables
    assert len(part_files(parted)) == 7 and len(part_files(whole)) == 1
    one, many = read_table(whole), read_table(parted)
    pd.testing.assert_frame_equal(one, many)
    assert many["uid"].is_monotonic_increasing
    for key in ("n_fetched", "n_pool", "dropped"):
        assert whole_report[key] == parted_report[key]
    for source, entry in whole_report["sources"].items():
        assert parted_report["sources"][source]["mean_score"] == pytest.approx(
            entry["mean_score"])
    rows = json.loads(parted.read_text())["rows_per_part"]
    assert sum(rows) == len(one) and min(rows) > 0
    assert not (root / "table_7.scatter").exists()  # the scattered inputs are removed


def table5_and_others():
    catalogue = expand_strategies(pipeline_config()["strategies"])
    names = [n for n, spec in catalogue.items()  # those this pool's two caption sets serve
             if parse_strategy(n, spec).sources() <= {"raw", "synthetic"}]
    return catalogue, sorted(names)


def test_every_strategy_gives_the_same_subset_from_parts(tables, tmp_path):
    root, whole, _, parted, _ = tables
    catalogue, names = table5_and_others()
    assert len(names) > 60
    whole_table = read_table(whole)
    index = pd.read_parquet(root / "index.parquet").set_index("uid")["shard"]
    for name in names:
        one = run_subset(name, catalogue[name], POOL, whole, tmp_path / name / "1")
        many = run_subset(name, catalogue[name], POOL, parted, tmp_path / name / "7")
        assert ((tmp_path / name / "1" / "uids.npy").read_bytes()
                == (tmp_path / name / "7" / "uids.npy").read_bytes()), name
        strip = ("provenance",)
        assert {k: v for k, v in one.items() if k not in strip} == {
            k: v for k, v in many.items() if k not in strip}, name
        a = pd.read_parquet(tmp_path / name / "1" / "samples.parquet")
        b = pd.read_parquet(tmp_path / name / "7" / "samples.parquet")
        key = ["part", "uid"]
        pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True),
                                      b.sort_values(key).reset_index(drop=True))
        # each sample carries its image's pool shard, for resharding (capmix.reshard)
        assert (a["shard"] == a["uid"].map(index)).all() and a["shard"].notna().all(), name
        # DataComp's formula by hand on the whole pool's scores
        strategy = parse_strategy(name, catalogue[name])
        for part in one["parts"]:
            if part["keep"] == "top":
                scores = whole_table[score_column(part["by"])].to_numpy()
                assert part["threshold"] == datacomp_threshold(-np.sort(-scores),
                                                               part["value"]), name
        assert strategy.name == name


def test_a_part_with_score_problems_names_them_and_writes_nothing(tmp_path):
    score_paths, manifests = write_pool(tmp_path, seed=3, n=300)
    scores = pd.read_parquet(score_paths["cap/0.75"])
    scores.loc[::10, "cos"] = np.nan  # one in ten, spread over every part
    scores.to_parquet(score_paths["cap/0.75"])
    with pytest.raises(ScoreTableError) as error:
        mix(tmp_path, 5, score_paths, manifests)
    message = str(error.value)
    # the first part's job stops (each part is its own job in the DAG), naming the part,
    # the caption set's score table (not the scattered copy), counts and examples
    assert "part 0 of 5" in message and str(score_paths["cap/0.75"]) in message
    assert "NaN" in message
    assert not (tmp_path / "table_5" / "part-00000.parquet").exists()
    assert not (tmp_path / "table_5.json").exists()


def test_scatter_takes_a_column_type_from_files_where_it_is_not_all_null(tmp_path):
    uids = random_uids(40, np.random.default_rng(5))
    pd.DataFrame({"uid": uids[:20], "captions": [None] * 20}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"uid": uids[20:], "captions": [["x"]] * 20}).to_parquet(tmp_path / "b.parquet")
    scatter_rows([tmp_path / "a.parquet", tmp_path / "b.parquet"], ["uid", "captions"], 4,
                 tmp_path / "work")
    frames = [pd.read_parquet(tmp_path / "work" / f"part-0000{i}.parquet") for i in range(4)]
    assert sum(len(f) for f in frames) == 40
    assert sorted(pd.concat(frames)["uid"]) == sorted(uids)
    for part, frame in enumerate(frames):
        assert (uid_parts(frame["uid"].tolist(), 4) == part).all()


def test_scattering_raises_the_open_file_limit_or_says_why_it_cannot(monkeypatch):
    import resource

    from capmix.mixparts import allow_open_files

    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda kind, limits: calls.append(limits))
    allow_open_files(3000)
    assert calls == [(3000, 4096)]
    with pytest.raises(OSError, match="8000 files open.*hard limit is 4096"):
        allow_open_files(8000)
    allow_open_files(100)  # under the soft limit: nothing to do
    assert calls == [(3000, 4096)]


def test_parts_out_of_uid_order_stop_the_subset_and_leave_no_half_files(tables, tmp_path):
    _, _, _, parted, _ = tables
    manifest = json.loads(parted.read_text())
    manifest["parts"] = [str(p) for p in reversed(part_files(parted))]  # not uid ranges in order
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps(manifest))
    catalogue, _ = table5_and_others()
    with pytest.raises(ValueError, match="do not follow the previous part's"):
        run_subset("raw_top_30", catalogue["raw_top_30"], POOL, shuffled, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def write_metadata(root, index: pd.DataFrame, rng: np.random.Generator):
    """The pool's metadata folder as the metadata stage writes it (manifest + parts), every
    row of the index (fetched or not) with a kept NSFW tag and watermark probability; the
    first part's tags are all missing (a null-typed column, as a part of LAION can be)."""
    folder = root / "metadata"
    folder.mkdir()
    parts = []
    for k, rows in enumerate(np.array_split(np.arange(len(index)), 4)):
        tags = ([None] * len(rows) if k == 0 else
                rng.choice(["UNLIKELY", "UNSURE", "NSFW"], len(rows), p=[.7, .2, .1]))
        frame = pd.DataFrame({"uid": index["uid"].to_numpy()[rows], "url": "http://x/",
                              "text": "t", "NSFW": tags,
                              "pwatermark": np.round(rng.random(len(rows)), 2)})
        frame.to_parquet(folder / f"part-{k:05d}.parquet")
        parts.append({"part": f"part-{k:05d}.parquet", "rows": len(rows)})
    (folder / "manifest.json").write_text(json.dumps({"parts": parts}))
    return folder


def test_a_metadata_filter_gives_the_same_subset_from_parts(tmp_path):
    """A kept column in its own folder per column (run_metadata_column), in the table's uid
    ranges, joined to each part by the strategy's subset job: the same subset from 1 and 5
    parts, and what the filter keeps worked out by hand from the metadata."""
    score_paths, manifests = write_pool(tmp_path, seed=4, n=400)
    index = pd.read_parquet(tmp_path / "index.parquet")
    folder = write_metadata(tmp_path, index, np.random.default_rng(4))
    spec = {"description": "x", "family": "safe", "metadata_filter": {
                "NSFW": {"in": ["UNLIKELY"]}, "pwatermark": {"max": 0.6}},
            "parts": [{"caption": "raw", "keep": {"top": 0.3}},
                      {"caption": "synthetic", "images": "remaining",
                       "keep": {"same_threshold": True}}]}
    summaries = {}
    for n_parts in (1, 5):
        inputs = MixInputs.from_manifests(tmp_path / "index.parquet", score_paths, manifests)
        out = tmp_path / f"table_{n_parts}.json"
        build_table("p", {"raw": ["raw"], "cap/0.75": ["cap/0.75"]}, inputs, out,
                    n_parts=n_parts)
        columns = {c: tmp_path / f"meta_{n_parts}" / c for c in ("NSFW", "pwatermark")}
        for column, target in columns.items():
            run_metadata_column("p", column, folder, n_parts, target, ["safe"])
        assert len(list(columns["NSFW"].glob("part-*.parquet"))) == n_parts
        summaries[n_parts] = run_subset("safe", spec, POOL, out, tmp_path / f"s{n_parts}",
                                        metadata_columns=columns)
    one, many = summaries[1], summaries[5]
    assert ((tmp_path / "s1" / "uids.npy").read_bytes()
            == (tmp_path / "s5" / "uids.npy").read_bytes())
    assert {k: v for k, v in one.items() if k != "provenance"} == {
        k: v for k, v in many.items() if k != "provenance"}
    assert one["metadata_filter"] == {"NSFW": {"in": ["UNLIKELY"]}, "pwatermark": {"max": 0.6}}
    # by hand: the raw part keeps the pool's top 30% by raw score (threshold over the whole
    # pool) that are tagged UNLIKELY with a probability of at most 0.6; the first metadata
    # part's images (tags missing) are never chosen
    table = read_table(tmp_path / "table_1.json")
    meta = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))])
    joined = table.merge(meta[["uid", "NSFW", "pwatermark"]], on="uid")
    raw_threshold = one["parts"][0]["threshold"]
    assert raw_threshold == datacomp_threshold(-np.sort(-table[score_column("raw")]
                                                        .to_numpy()), 0.3)
    passing = joined[(joined["NSFW"] == "UNLIKELY") & (joined["pwatermark"] <= 0.6)]
    samples = pd.read_parquet(tmp_path / "s1" / "samples.parquet")
    assert set(samples.loc[samples["part"] == 0, "uid"]) == set(
        passing.loc[passing[score_column("raw")] >= raw_threshold, "uid"])
    assert len(samples) > 0 and set(samples["uid"]) <= set(passing["uid"])
    # a column the metadata lacks stops the column's job, naming the files and strategies
    with pytest.raises(MetadataColumnError, match=r"(?s)strategies safe.*'punsafe'.*part-00000"):
        run_metadata_column("p", "punsafe", folder, 5, tmp_path / "punsafe", ["safe"])
    assert not (tmp_path / "punsafe").exists()
    # a subset job given a column folder in other parts than the table's stops
    with pytest.raises(ValueError, match="in 1 part.*the mix table in 5"):
        run_subset("safe", spec, POOL, tmp_path / "table_5.json", tmp_path / "bad",
                   metadata_columns={c: tmp_path / "meta_1" / c for c in ("NSFW", "pwatermark")})
