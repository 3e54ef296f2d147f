"""Job records and the chain a reviewer walks (capmix.lineage, capmix provenance).

The records here are written by the real context manager, around small jobs on files in a
temporary working directory (a stand-in for the ``snakemake`` object carries what a script
sees). The smoke DAG's records are checked in tests/test_workflow.py, on its one run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from capmix import cli, lineage
from tests.conftest import REPO


class Named(list):
    """Snakemake's Namedlist as a script sees it: a list, named entries as attributes."""

    def __init__(self, *positional, **named):
        flat = list(positional)
        for value in named.values():
            flat += list(value) if isinstance(value, list) else [value]
        super().__init__(flat)
        self.named = named
        for key, value in named.items():
            setattr(self, key, value)

    def items(self):
        return list(self.named.items())


def fake_snakemake(rule, inputs=None, outputs=None, params=None, wildcards=None):
    class Job:
        pass

    sm = Job()
    sm.rule, sm.threads = rule, 1
    sm.input, sm.output = Named(**(inputs or {})), Named(**(outputs or {}))
    sm.params, sm.wildcards = Named(**(params or {})), Named(**(wildcards or {}))
    sm.resources, sm.log = Named(mem_mb=100), [f"logs/{rule}.log"]
    return sm


def run_job(rule, body, **spec):
    """Run ``body(sm, job)`` as a job of ``rule`` in the current directory."""
    sm = fake_snakemake(rule, **spec)
    with lineage.job_provenance(sm, script=__file__) as job:
        for path in sm.output:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        body(sm, job)
    return sm


def toy_run(workdir: Path, n: int = 1, source_text: str = "uid,text\n1,a\n") -> Path:
    """source.csv -> make (results/a.json) ; shards (results/d/, a directory) ->
    use (results/b.json, reading a.json and one file of d/). Returns b.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "source.csv").write_text(source_text)

    def make(sm, job):
        rows = Path(sm.input.table).read_text().splitlines()
        Path(sm.output.json).write_text(json.dumps({"rows": len(rows) * sm.params.n}))

    def shards(sm, job):
        Path(sm.output.folder).mkdir(parents=True)
        for i in range(3):
            Path(sm.output.folder, f"part{i}.txt").write_text(f"shard {i}\n")
        Path(sm.output.folder, "sub").mkdir()
        Path(sm.output.folder, "sub", "deep.txt").write_text("deep\n")
        Path("results/extra").mkdir(parents=True, exist_ok=True)
        Path("results/extra/side.txt").write_text("side\n")
        job.produced("results/extra")

    def use(sm, job):
        a = json.loads(Path(sm.input.a).read_text())
        Path(sm.output.result).write_text(json.dumps({"value": a["rows"] + 1}))

    cwd = Path.cwd()
    try:
        import os

        os.chdir(workdir)
        run_job("make", make, inputs={"table": "config/source.csv"},
                outputs={"json": "results/a.json"}, params={"n": n, "spec": {"k": [1, 2]}},
                wildcards={"pool": "p"})
        run_job("shards", shards, outputs={"folder": "results/d"}, wildcards={"pool": "p"})
        run_job("use", use, inputs={"a": "results/a.json", "part": ["results/d/part1.txt"],
                                    "side": "results/extra/side.txt"},
                outputs={"result": "results/b.json"}, params={"offset": 1},
                wildcards={"pool": "p"})
    finally:
        os.chdir(cwd)
    return workdir / "results" / "b.json"


def test_a_job_record_holds_what_the_issue_asks(tmp_path):
    toy_run(tmp_path)
    records = sorted((tmp_path / lineage.PROVENANCE_DIR / "jobs").glob("*/*.json"))
    assert [p.parent.name for p in records] == ["make", "shards", "use"]
    record = json.loads((tmp_path / lineage.PROVENANCE_DIR / "jobs" / "make").glob(
        "*.json").__next__().read_text())
    assert record["rule"] == "make" and record["wildcards"] == {"pool": "p"}
    assert record["params"] == {"n": 1, "spec": {"k": [1, 2]}}
    [source] = record["inputs"]
    assert source["path"] == "config/source.csv" and source["name"] == "table"
    assert source["sha256"] == lineage.sha256_file(tmp_path / "config/source.csv")
    [output] = record["outputs"]
    assert output["path"] == "results/a.json" and output["bytes"] > 0 and output["sha256"]
    assert record["started"] <= record["ended"] and record["host"]["name"]
    assert record["gpu"] is None  # no torch imported by this job... or no CUDA
    code = record["code"]
    assert {"git_commit", "git_dirty", "git_diff_sha256"} <= set(code)
    assert code["script"]["path"] == "tests/test_lineage.py"
    assert code["modules"]["src/capmix/lineage.py"] == lineage.sha256_file(
        REPO / "src/capmix/lineage.py")
    env = json.loads((tmp_path / lineage.PROVENANCE_DIR / "environments" /
                      f"{record['environment']['sha256']}.json").read_text())
    assert env["distributions"]["snakemake"] == "9.27.1"  # installed, not declared
    assert lineage.environment_hash(env) == record["environment"]["sha256"]
    # A directory output: one digest over its files, and each file.
    shards = json.loads(next((tmp_path / lineage.PROVENANCE_DIR / "jobs" / "shards")
                             .glob("*.json")).read_text())
    folder, extra = shards["outputs"]
    assert folder["kind"] == "directory" and folder["files"] == 4
    assert [m["path"] for m in folder["members"]] == [
        "part0.txt", "part1.txt", "part2.txt", "sub/deep.txt"]
    assert folder["sha256"] == lineage.directory_digest(folder["members"])
    assert extra["path"] == "results/extra" and extra["declared"] is False


def test_rerun_replaces_the_record_and_a_failed_job_removes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def write(sm, job):
        Path(sm.output.out).write_text("x")

    spec = {"outputs": {"out": "results/x.txt"}, "params": {"v": 1}}
    run_job("r", write, **spec)
    run_job("r", write, **{**spec, "params": {"v": 2}})
    [path] = (tmp_path / lineage.PROVENANCE_DIR / "jobs" / "r").glob("*.json")
    assert json.loads(path.read_text())["params"] == {"v": 2}

    def fail(sm, job):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_job("r", fail, **spec)
    assert not path.exists()


def test_the_chain_walks_producers_back_to_the_sources(tmp_path, capsys):
    result = toy_run(tmp_path)
    records = lineage.Lineage.of(result)
    assert records.workdir == tmp_path.resolve()
    chain = records.chain([result])
    assert [r["rule"] for r in chain.jobs.values()] == ["use", "make", "shards", "shards"][:3]
    assert set(chain.sources) == {"config/source.csv"}
    # A file inside a directory output is made by the directory's job.
    assert records.producer("results/d/sub/deep.txt").job.startswith("shards/")
    assert records.producer("results/d/new.txt").job.startswith("shards/")
    assert records.producer("config/source.csv") is None

    assert cli.main(["provenance", str(result)]) == 0
    out = capsys.readouterr().out
    assert "- use[pool=p]" in out and "  - make[pool=p]" in out and "  - shards[pool=p]" in out
    assert "source config/source.csv" in out and "3 jobs" in out
    assert cli.main(["provenance", "--json", str(result)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sources"] == {"config/source.csv": [next(
        j for j, r in chain.jobs.items() if r["rule"] == "make")]}


def test_check_names_a_one_byte_change_upstream_and_its_job(tmp_path, capsys):
    result = toy_run(tmp_path)
    assert cli.main(["provenance", "--check", str(result)]) == 0
    assert "OK:" in capsys.readouterr().out

    # One byte of an upstream file (made by job make), one of a directory's file, a source.
    upstream = tmp_path / "results/a.json"
    data = bytearray(upstream.read_bytes())
    data[2] ^= 1
    upstream.write_bytes(bytes(data))
    (tmp_path / "results/d/sub/deep.txt").write_text("deeP\n")
    (tmp_path / "config/source.csv").write_text("uid,text\n1,b\n")
    assert cli.main(["provenance", "--check", str(result)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"CHANGED: results/a\.json \(made by make\[pool=p\]", out), out
    assert re.search(r"CHANGED: results/d/sub/deep\.txt \(made by shards\[pool=p\]", out), out
    assert re.search(r"CHANGED: config/source\.csv \(made by no job\).*a source", out), out
    (tmp_path / "results/d/part0.txt").unlink()
    problems = lineage.check(lineage.Lineage.of(result).chain([result]))
    assert {(p.kind, p.path) for p in problems} >= {("missing", "results/d/part0.txt")}


def test_check_names_a_result_made_from_an_older_upstream_file(tmp_path, monkeypatch):
    """make re-runs (new a.json) but use does not: b.json predates its input."""
    result = toy_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    run_job("make", lambda sm, job: Path(sm.output.json).write_text('{"rows": 99}'),
            inputs={"table": "config/source.csv"}, outputs={"json": "results/a.json"},
            params={"n": 1, "spec": {"k": [1, 2]}}, wildcards={"pool": "p"})
    problems = lineage.check(lineage.Lineage.of(result).chain([result]))
    assert [(p.kind, p.path) for p in problems] == [("stale", "results/a.json")]
    assert "use[pool=p] consumed another version" in problems[0].detail


def test_diff_names_a_changed_parameter_and_a_changed_input(tmp_path, capsys):
    a = toy_run(tmp_path / "a")
    b = toy_run(tmp_path / "b", n=2, source_text="uid,text\n1,a\n2,b\n")
    assert cli.main(["provenance", "--diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "make[pool=p]:" in out
    assert "param n: A 1 vs B 2" in out
    assert re.search(r"input table: A config/source\.csv \(\w+\) vs B config/source\.csv", out)
    assert "use[pool=p]:" in out and "input a: A results/a.json" in out  # a.json changed too
    assert "shards" not in out  # the same in both runs
    result = lineage.diff(*(lineage.Lineage.of(p).chain([p]) for p in (a, b)))
    assert result["jobs_compared"] == 3 and not result["only_a"] and not result["only_b"]


def test_table_cells_resolve_through_their_sidecar(tmp_path, capsys):
    result = toy_run(tmp_path)
    table = tmp_path / "results" / "t.csv"
    lineage.write_table(table, ["row", "value", "note"], [["first", 2, "x"]],
                        [{"row": "first", "column": "value", "sources": ["results/b.json"],
                          "field": "value"}])
    cell = lineage.find_cell(table, "first", "value")
    assert cell["value"] == "2" and cell["sources"] == ["results/b.json"]
    with pytest.raises(LookupError, match=r"t\.csv: no cell at row 'second'.*rows: first"):
        lineage.find_cell(table, "second", "value")
    with pytest.raises(ValueError, match="not in the table"):
        lineage.write_table(table, ["row", "value"], [["first", 1]],
                            [{"row": "first", "column": "nope", "sources": []}])
    assert cli.main(["provenance", str(table), "--cell", "first", "value"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cell ('first', 'value') of ") and "= '2', field value" in out
    assert "source config/source.csv" in out
    assert result.exists()
    assert cli.main(["provenance", str(table), "--cell", "first", "note"]) == 2
    assert "no cell at row 'first', column 'note'" in capsys.readouterr().err


def test_every_entry_script_runs_in_job_provenance():
    """Each workflow/scripts/*.py runs its body inside ``with job_provenance(sm)``, right
    after setting up its log, so every job writes its record."""
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert len(scripts) >= 22
    for script in scripts:
        text = script.read_text()
        assert "from capmix.lineage import job_provenance" in text, script.name
        assert re.search(r"setup_logging\(sm\.log\[0\]\)\n\s*with job_provenance\(sm\)"
                         r"( as job)?:\n", text), script.name


def validate_crate(path: Path) -> list[str]:
    """rocrate-validator's required-level issues with the Provenance Run Crate profile.

    The profiles ship with the validator, but it resolves the crate's JSON-LD context
    (https://w3id.org/ro/crate/1.1/context) over HTTP through its own cache: offline with an
    empty cache it stops ("Name or service not known"). Here that one document is served
    from the copy the rocrate library ships: RO-Crate 1.3's context, whose schema.org and
    Dublin Core terms are 1.1's, with the four Bioschemas terms set back to the IRIs of 1.1
    (which the validator's profiles use). Every other request goes out as usual."""
    import rocrate
    from rocrate_validator import services
    from rocrate_validator.models import Severity, ValidationSettings
    from rocrate_validator.utils.http import HttpRequester

    context = json.loads((Path(rocrate.__file__).parent / "data" / "ro-crate.jsonld")
                         .read_text())["@context"]
    context.update({"ComputationalWorkflow": "https://bioschemas.org/ComputationalWorkflow",
                    "FormalParameter": "https://bioschemas.org/FormalParameter",
                    "input": "https://bioschemas.org/ComputationalWorkflow#input",
                    "output": "https://bioschemas.org/ComputationalWorkflow#output"})

    class Context:
        status_code = 200
        headers = {"Content-Type": "application/ld+json"}
        text = json.dumps({"@context": context})

        def json(self):
            return json.loads(self.text)

    def get(self, url, **kwargs):
        if str(url).startswith("https://w3id.org/ro/crate/1.1/context"):
            return Context()
        return self.__getattr__("get")(url, **kwargs)  # the requester's session, cached

    HttpRequester.get = get  # a class attribute comes before the requester's __getattr__
    try:
        result = services.validate(ValidationSettings(
            rocrate_uri=str(path), profile_identifier="provenance-run-crate-0.5",
            requirement_severity=Severity.REQUIRED))
    finally:
        del HttpRequester.get
    return [f"{issue.check.identifier} {issue.message}" for issue in result.get_issues()]


def test_the_chain_exports_as_a_valid_provenance_run_crate(tmp_path, capsys):
    result = toy_run(tmp_path / "run")
    out = tmp_path / "crate"
    assert cli.main(["provenance", "--ro-crate", str(out), str(result)]) == 0
    assert "wrote" in capsys.readouterr().out
    metadata = json.loads((out / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in metadata["@graph"]}
    root = graph["./"]
    assert {"@id": "https://w3id.org/ro/wfrun/provenance/0.5"} in root["conformsTo"]
    actions = [e for e in graph.values() if e["@type"] == "CreateAction" and e["@id"] != "#run"]
    assert sorted(a["name"] for a in actions) == ["make[pool=p]", "shards[pool=p]",
                                                  "use[pool=p]"]
    # Results by reference (path and hash), records copied in.
    a = graph[(tmp_path / "run/results/a.json").resolve().as_uri()]
    assert a["sha256"] == lineage.sha256_file(tmp_path / "run/results/a.json")
    assert a["alternateName"] == "results/a.json"
    assert not (out / "results").exists()
    assert len(list((out / "records").glob("*/*.json"))) == 3
    assert validate_crate(out) == []


def test_a_jobs_provenance_block_reads_each_input_once(tmp_path, monkeypatch):
    """The job record hashes every input on entry; a stage's provenance block in the same
    job takes the same checksums (capmix.provenance.checksums_from) instead of reading the
    file again, and a block outside any job still hashes it."""
    from capmix import provenance

    monkeypatch.chdir(tmp_path)
    Path("data.bin").write_bytes(b"x" * 4096)
    reads = []
    original = provenance.sha256_file

    def counting(path, *args, **kwargs):
        reads.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(provenance, "sha256_file", counting)
    monkeypatch.setattr(lineage, "sha256_file", counting)
    blocks = []

    def body(sm, job):
        blocks.append(provenance.provenance_record("stage", [sm.input.data]))
        Path(sm.output.out).write_text("done\n")

    run_job("stage", body, inputs={"data": "data.bin"}, outputs={"out": "results/out.txt"})
    assert reads.count("data.bin") == 1
    assert blocks[0]["inputs"] == [{"path": "data.bin", "sha256": original("data.bin"),
                                    "bytes": 4096}]
    provenance.provenance_record("stage", ["data.bin"])
    assert reads.count("data.bin") == 2
