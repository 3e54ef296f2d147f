"""A lineage chain as a Workflow Run RO-Crate (Provenance Run Crate profile 0.5).

capmix's job records are its own format; an RO-Crate is the community's (ELIXIR, Galaxy,
CWL, Nextflow and Snakemake exporters write it), so a chain exported here is read by tools
that know nothing of capmix, and outlives it. The mapping (https://w3id.org/ro/wfrun/
provenance/0.5):

* the Snakefile is the crate's main entity (``ComputationalWorkflow``); each rule's script a
  tool (``SoftwareSourceCode``, a step ``HowToStep`` of the workflow) with one
  ``FormalParameter`` per param;
* each job is a ``CreateAction`` (instrument: its rule's tool; object: the files it read
  and its params as ``PropertyValue``; result: the files it wrote; start and end time),
  wrapped in a ``ControlAction`` for its step; one ``OrganizeAction`` (instrument:
  Snakemake) orchestrates them all and results in the workflow run's ``CreateAction``,
  whose object are the sources and result the targets;
* files of the results tree are referenced by their path in the run's working directory,
  with ``sha256`` and ``contentSize``, never copied (results are large); the job records,
  environments, Snakefile and scripts are small and are copied in, so the crate alone
  answers "which code, parameters and software".

The ``rocrate`` library (RO-Crate's Python reference implementation) writes the metadata
file, so contexts, the metadata descriptor and the profile ``conformsTo`` are its own.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capmix import __version__
from capmix.lineage import Chain, job_label, load_environment

PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}


def ident(text: str) -> str:
    """A local identifier (``#...``) from free text."""
    return "#" + "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def write_crate(chain: Chain, out: Path, cell: Mapping[str, Any] | None = None) -> Path:
    """Write ``chain`` as an RO-Crate into folder ``out`` (created; its metadata file is
    replaced). Returns the folder."""
    from rocrate.model.computationalworkflow import ComputationalWorkflow
    from rocrate.rocrate import ROCrate

    class StepsWorkflow(ComputationalWorkflow):
        """A workflow that links to its steps is also a HowTo (Provenance Run Crate)."""

        TYPES = [*ComputationalWorkflow.TYPES, "HowTo"]

    lineage = chain.lineage
    out.mkdir(parents=True, exist_ok=True)
    crate = ROCrate(version="1.1")  # the RO-Crate version the 0.5 profiles build on
    crate.metadata.extra_terms.update({"sha256": "http://schema.org/sha256"})
    records = list(chain.jobs.items())
    started = min((r.get("started") for _, r in records if r.get("started")), default=None)
    ended = max((r.get("ended") for _, r in records if r.get("ended")), default=None)
    code_root = Path(next((r["code"]["root"] for _, r in records
                           if r.get("code", {}).get("root")), lineage.workdir))
    what = f"cell ({cell['row']}, {cell['column']}) of {cell['table']}" if cell else \
        ", ".join(chain.targets)
    root = crate.root_dataset
    root["name"] = f"capmix provenance of {what}"
    root["description"] = (
        f"The chain of {len(records)} Snakemake jobs of capmix {__version__} that produced "
        f"{what}, back to the files no job made. Result files are referenced by their path "
        f"in the run's working directory ({lineage.workdir}) with their SHA-256, not copied; "
        "records/ holds each job's full capmix record (code hashes, installed software, "
        "host, parameters), environments/ the software each ran with.")
    root["datePublished"] = (ended or "")[:10] or None
    root["license"] = {"@id": "https://spdx.org/licenses/CC-BY-4.0"}
    for profile, name in PROFILES.items():
        crate.add_jsonld({"@id": profile, "@type": "CreativeWork", "name": name,
                          "version": profile.rsplit("/", 1)[1]})
    root["conformsTo"] = [{"@id": p} for p in PROFILES]

    snakemake_version = None
    for _, record in records:
        env = load_environment(lineage, (record.get("environment") or {}).get("sha256"))
        if env:
            snakemake_version = env.get("distributions", {}).get("snakemake")
            break
    snakefile = code_root / "Snakefile"
    workflow = crate.add_workflow(
        snakefile if snakefile.is_file() else None, "Snakefile", main=True, lang="snakemake",
        lang_version=snakemake_version, properties={"name": "capmix Snakefile"},
        cls=StepsWorkflow)

    files: dict[str, Any] = {}

    def data_file(entry: Mapping[str, Any]) -> dict[str, str]:
        """The File entity of a record entry (created once), by reference."""
        key = entry["path"]
        if key not in files:
            properties: dict[str, Any] = {"name": Path(key).name}
            if entry.get("sha256"):
                properties["sha256"] = entry["sha256"]
            if entry.get("bytes") is not None:
                properties["contentSize"] = str(entry["bytes"])
            if entry.get("kind") == "directory":
                properties["description"] = (
                    f"directory of {entry.get('files')} files; sha256 over (path, size, "
                    "sha256) of each (capmix.provenance.directory_digest)")
            properties["alternateName"] = key  # its path in the run's working directory
            # An absolute file: URI: RO-Crate's way to name a local file that is not in the
            # crate's payload (validators do not require it to be there).
            identifier = lineage.absolute(key).resolve().as_uri()
            files[key] = crate.add_file(identifier, properties=properties)
        return {"@id": files[key].id}

    tools: dict[str, Any] = {}  # rule -> its script's entity
    scripts: dict[str, Any] = {}  # script path -> entity (once, if rules share one)
    parameters: dict[tuple[str, str], str] = {}
    steps = []
    control_actions, actions = [], []
    for job, record in records:
        rule = record["rule"]
        if rule not in tools:
            script = (record.get("code") or {}).get("script") or {}
            script_path = script.get("path") or f"workflow/rules#{rule}"
            source = code_root / script_path if script.get("path") else None
            formal = []
            for name in sorted(record.get("params", {})):
                pid = ident(f"param-{rule}-{name}")
                parameters[(rule, name)] = pid
                crate.add_jsonld({"@id": pid, "@type": "FormalParameter", "name": name,
                                  "additionalType": "Text",
                                  "conformsTo": {"@id": "https://bioschemas.org/profiles/"
                                                        "FormalParameter/1.0-RELEASE"}})
                formal.append({"@id": pid})
            if script_path in scripts:
                tools[rule] = scripts[script_path]
                tools[rule].append_to("input", formal)
            else:
                tools[rule] = scripts[script_path] = crate.add_file(
                    source if source is not None and source.is_file() else None, script_path,
                    properties={"@type": ["File", "SoftwareSourceCode"],
                                "name": f"script of rule {rule}",
                                "programmingLanguage": {"@id": "#python"}, "input": formal,
                                "sha256": script.get("sha256")})
            step = crate.add_jsonld({"@id": ident(f"step-{rule}"), "@type": "HowToStep",
                                     "name": rule, "position": str(len(steps)),
                                     "workExample": {"@id": tools[rule].id}})
            steps.append({"@id": step.id})
        key = Path(lineage.files[job]).stem
        record_copy = f"records/{rule}/{key}.json"
        (out / record_copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lineage.files[job], out / record_copy)
        env_hash = (record.get("environment") or {}).get("sha256")
        env = load_environment(lineage, env_hash)
        if env is not None:
            env_copy = out / "environments" / f"{env_hash}.json"
            env_copy.parent.mkdir(parents=True, exist_ok=True)
            env_copy.write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")
        values = []
        for name, value in sorted(record.get("params", {}).items()):
            vid = ident(f"value-{key[:16]}-{name}")
            crate.add_jsonld({"@id": vid, "@type": "PropertyValue", "name": name,
                              "value": json.dumps(value, sort_keys=True),
                              "exampleOfWork": {"@id": parameters[(rule, name)]}})
            values.append({"@id": vid})
        action = crate.add_jsonld({
            "@id": ident(f"job-{key[:16]}"), "@type": "CreateAction", "name": job_label(record),
            "instrument": {"@id": tools[rule].id},
            "object": [data_file(e) for e in record.get("inputs", [])] + values,
            "result": [data_file(e) for e in record.get("outputs", [])],
            "startTime": record.get("started"), "endTime": record.get("ended"),
            "description": f"host {record.get('host', {}).get('name')}; "
                           f"code commit {record.get('code', {}).get('git_commit')}"
                           f"{' (dirty)' if record.get('code', {}).get('git_dirty') else ''}; "
                           f"environment {env_hash}",
        })
        crate.add_file(out / record_copy, record_copy, properties={
            "name": f"capmix job record of {job_label(record)}",
            "encodingFormat": "application/json", "about": {"@id": action.id}})
        actions.append({"@id": action.id})
        control = crate.add_jsonld({"@id": ident(f"control-{key[:16]}"),
                                    "@type": "ControlAction",
                                    "name": f"orchestrate {job_label(record)}",
                                    "instrument": {"@id": ident(f"step-{rule}")},
                                    "object": {"@id": action.id}})
        control_actions.append({"@id": control.id})
    crate.add_jsonld({"@id": "#python", "@type": "ComputerLanguage", "name": "Python",
                      "identifier": {"@id": "https://www.python.org/"},
                      "url": {"@id": "https://www.python.org/"}})
    workflow["hasPart"] = [{"@id": t.id} for t in scripts.values()]
    workflow["step"] = steps
    run = crate.add_jsonld({
        "@id": "#run", "@type": "CreateAction", "name": f"capmix run producing {what}",
        "instrument": {"@id": workflow.id},
        "object": [data_file(next(e for e, _ in chain.edges[consumers[0]] if e["path"] == s))
                   for s, consumers in sorted(chain.sources.items())],
        "result": [data_file(lineage.producer(t).entry) for t in chain.targets
                   if lineage.producer(t) is not None],
        "startTime": started, "endTime": ended})
    root["mentions"] = [{"@id": run.id}]
    engine = crate.add_jsonld({"@id": "#snakemake", "@type": "SoftwareApplication",
                               "name": "Snakemake", "version": snakemake_version,
                               "url": {"@id": "https://snakemake.readthedocs.io"}})
    crate.add_jsonld({"@id": "#orchestration", "@type": "OrganizeAction",
                      "name": "Snakemake run of the capmix workflow",
                      "instrument": {"@id": engine.id}, "object": control_actions,
                      "result": {"@id": run.id}, "startTime": started, "endTime": ended})
    for env_file in sorted((out / "environments").glob("*.json")):
        crate.add_file(env_file, f"environments/{env_file.name}", properties={
            "name": "installed Python distributions of a job environment",
            "encodingFormat": "application/json"})
    with warnings.catch_warnings():  # "No source for ...": by reference, on purpose
        warnings.simplefilter("ignore", UserWarning)
        crate.write(out)
    return out
