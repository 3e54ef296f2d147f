"""The ``capmix`` command (``[project.scripts]``; also ``python -m capmix``).

One subcommand today, ``provenance``: where a number came from (``capmix.lineage``).

    capmix provenance PATH                      the chain of jobs back to the sources
    capmix provenance TABLE --cell ROW COLUMN   the same for one cell of a table
    capmix provenance --check PATH              re-hash the chain; exit 1 if a file changed
    capmix provenance --diff A B                why two results differ
    capmix provenance --ro-crate OUT PATH       export the chain as a Workflow Run RO-Crate

Paths are files of a results tree; the records are found in the nearest
``results/provenance`` above each path (so two runs' results can be compared).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from capmix import lineage


def provenance_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = ("Where a result came from: the chain of Snakemake jobs back to the "
                          "source files, from the job records under results/provenance.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a result file (figure, table, JSON...); two with --diff")
    parser.add_argument("--cell", nargs=2, metavar=("ROW", "COLUMN"),
                        help="one cell of a table PATH (T.csv with its T.cells.json)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true",
                        help="re-hash every file of the chain; name each changed or missing "
                             "one and the job that made it (exit 1 if any)")
    action.add_argument("--diff", action="store_true",
                        help="A B: differences in params, code, inputs and software along "
                             "the two chains")
    action.add_argument("--ro-crate", metavar="OUT",
                        help="write the chain as a Workflow Run RO-Crate (Provenance Run "
                             "Crate profile) into folder OUT")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def targets(path: str, cell: Sequence[str] | None) -> tuple[lineage.Lineage, list[str],
                                                            dict | None]:
    """The records of ``path``'s run, and the files to walk from: ``path`` itself, or the
    sources of one of its cells."""
    records = lineage.Lineage.of(path)
    if cell is None:
        return records, [path], None
    found = lineage.find_cell(path, *cell)
    found["table"] = records.key(found["table"])
    return records, [str(records.absolute(s)) for s in found["sources"]], found


def run_provenance(args: argparse.Namespace) -> int:
    if args.diff and len(args.paths) != 2:
        print("error: --diff compares two results: capmix provenance --diff A B",
              file=sys.stderr)
        return 2
    if not args.diff and len(args.paths) != 1:
        print("error: one PATH (two only with --diff)", file=sys.stderr)
        return 2
    try:
        walked = [targets(p, args.cell) for p in args.paths]
    except (LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    chains = [records.chain(paths) for records, paths, _ in walked]
    cell = walked[0][2]
    out: dict = {"cell": cell} if cell else {}
    if args.diff:
        result = lineage.diff(chains[0], chains[1])
        emit(args, {**out, "diff": result}, lineage.render_diff(result), cell)
        return 0
    chain = chains[0]
    if args.check:
        problems = lineage.check(chain)
        emit(args, {**out, "problems": [p.to_json() for p in problems],
                    "jobs": len(chain.jobs), "sources": sorted(chain.sources)},
             lineage.render_problems(chain, problems), cell)
        return 1 if problems else 0
    if args.ro_crate:
        from capmix.runcrate import write_crate

        crate = write_crate(chain, Path(args.ro_crate), cell=cell)
        emit(args, {**out, "crate": str(crate), "jobs": len(chain.jobs)},
             f"wrote {crate} ({len(chain.jobs)} jobs)", cell)
        return 0
    emit(args, {**out, **chain.to_json()}, lineage.render_chain(chain), cell)
    return 0


def emit(args: argparse.Namespace, data: dict, text: str, cell: dict | None) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    if cell:
        field = f", field {cell['field']}" if cell.get("field") else ""
        print(f"cell ({cell['row']!r}, {cell['column']!r}) of {cell['table']} = "
              f"{cell.get('value')!r}{field}; from {', '.join(cell['sources'])}")
    print(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="capmix", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    provenance_parser(commands.add_parser(
        "provenance", help="where a result came from (chain, --check, --diff, --ro-crate)"))
    args = parser.parse_args(argv)
    if args.command == "provenance":
        return run_provenance(args)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
