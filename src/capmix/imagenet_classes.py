"""ImageNet-1k's classes by index, WordNet id and name, and CaptionNet's class list read onto
them: the 100-class evaluation from CaptionNet's own ``metadata/in100_classes.txt``.

Why: an eval suite restricts its tasks to classes *by name*, as each task's
``classnames.txt`` spells them (:mod:`capmix.suites`), while a class list may name the classes
by ImageNet-1k index, by WordNet id or by a spelling of its own. This module reads such a list
(:func:`read_class_list`) and maps it onto the class names of the suite's ImageNet-1k task
(:func:`class_names`), so the user does not have to write the names by hand.

The forms a line may take (one class a line; blank lines and ``#`` comments skipped; a
leading ``{`` and a trailing ``,`` or ``}`` ignored, so a Python dict written one entry a line
reads line by line; nothing is evaluated):

* ``'african bush elephant': 2082`` -- a quoted class name and a count: the form of
  CaptionNet's ``metadata/in100_classes.txt`` (class name: available samples), names in
  lower case with punctuation dropped ("ram adult male sheep" for "ram (adult male sheep)");
* ``417`` -- an ImageNet-1k class index (0-999), as CaptionNet's ``idx`` column;
* ``n01440764`` -- a WordNet id (ImageNet's folder names), placed by timm's list of the 1,000
  ids in class-index order;
* ``417 balloon``, ``417: 'balloon'``, ``n01440764 tench`` -- an index or WordNet id followed
  by a name (the name is a comment: the index or id decides);
* ``tench`` -- a bare class name.

A name is matched to the task's names after :func:`normalise_name` (lower case, every run of
characters other than letters and digits one space), which makes CaptionNet's spellings
those of OpenAI's ImageNet class names (the ones DataComp's ImageNet tasks use). Every line
that does not map to exactly one class is an error naming the file and the line.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: ImageNet-1k's number of classes: an index is 0 .. IMAGENET_1K_CLASSES - 1.
IMAGENET_1K_CLASSES = 1000
#: Where the ImageNet-1k WordNet ids come from (a package on PyPI, found without importing
#: it): timm's list of the 1,000 ids in class-index order.
IMAGENET_WNIDS = ("timm", "data/_info/imagenet_synsets.txt")
#: Problems shown per error message.
EXAMPLES = 8

_QUOTED_COUNT = re.compile(r"""^(['"])(.+)\1\s*:\s*\d+$""")
_INDEX = re.compile(r"^(\d+)(?:\s*[:,\t ]\s*(.*))?$")
_WNID = re.compile(r"^(n\d{8})(?:\s*[:,\t ]\s*(.*))?$")


class ClassListError(ValueError):
    """A class list that cannot be read or mapped; the message names the file and lines."""


@dataclass(frozen=True)
class ClassRef:
    """One line of a class list: the class by index, WordNet id or name."""

    line: int
    text: str
    index: int | None = None
    wnid: str | None = None
    name: str | None = None


def package_file(package: str, relative: str) -> Path | None:
    """A data file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.exists() else None


def normalise_name(name: str) -> str:
    """A class name compared loosely: lower case, each run of other characters than letters
    and digits one space ("ram (adult male sheep)" and "ram adult male sheep" are equal)."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", name.lower()).split())


def read_class_list(path: Path) -> list[ClassRef]:
    """The classes a list file names, in its order (forms: the module's docstring). A file
    that is missing or names no class is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ClassListError(f"class list {path} is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ClassListError(f"class list {path}: not UTF-8 ({exc})") from exc
    refs = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("{"):
            line = line[1:].strip()
        if line.endswith("}"):
            line = line[:-1].strip()
        line = line.rstrip(",").strip()
        if not line or line.startswith("#"):
            continue
        if match := _QUOTED_COUNT.match(line):
            refs.append(ClassRef(number, raw.strip(), name=match.group(2)))
        elif match := _INDEX.match(line):
            refs.append(ClassRef(number, raw.strip(), index=int(match.group(1))))
        elif match := _WNID.match(line):
            refs.append(ClassRef(number, raw.strip(), wnid=match.group(1)))
        else:
            refs.append(ClassRef(number, raw.strip(), name=line.strip("'\"")))
    if not refs:
        raise ClassListError(f"class list {path} names no class")
    return refs


def imagenet_wnids() -> list[str]:
    """ImageNet-1k's WordNet ids in class-index order (timm's list)."""
    found = package_file(*IMAGENET_WNIDS)
    if found is None:
        raise ClassListError(f"the ImageNet-1k WordNet ids ({'/'.join(IMAGENET_WNIDS)}) are "
                             f"not installed: a class list by WordNet id needs package "
                             f"{IMAGENET_WNIDS[0]}")
    wnids = found.read_text(encoding="utf-8").split()
    if len(wnids) != IMAGENET_1K_CLASSES:
        raise ClassListError(f"{found}: {len(wnids)} WordNet ids, not ImageNet-1k's "
                             f"{IMAGENET_1K_CLASSES}")
    return wnids


def _raise(path: Path, problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:EXAMPLES])
        more = f" and {len(problems) - EXAMPLES} more" if len(problems) > EXAMPLES else ""
        raise ClassListError(f"class list {path}: {shown}{more}")


def _indices(path: Path, refs: Sequence[ClassRef], wnids: Sequence[str] | None,
             problems: list[str]) -> dict[int, int]:
    """Line -> ImageNet-1k index of the lines that give an index or a WordNet id."""
    found: dict[int, int] = {}
    position: dict[str, int] | None = None
    for ref in refs:
        if ref.index is not None:
            if 0 <= ref.index < IMAGENET_1K_CLASSES:
                found[ref.line] = ref.index
            else:
                problems.append(f"line {ref.line} ({ref.text!r}): index {ref.index} is outside "
                                f"ImageNet-1k's 0-{IMAGENET_1K_CLASSES - 1}")
        elif ref.wnid is not None:
            if position is None:
                position = {w: i for i, w in enumerate(imagenet_wnids() if wnids is None
                                                       else wnids)}
            if ref.wnid in position:
                found[ref.line] = position[ref.wnid]
            else:
                problems.append(f"line {ref.line} ({ref.text!r}): {ref.wnid} is not one of "
                                f"ImageNet-1k's {IMAGENET_1K_CLASSES} WordNet ids")
    return found


def class_list_problems(path: Path, wnids: Sequence[str] | None = None) -> list[str]:
    """What can be checked in a class list before any evaluation data is there: that it reads,
    and that its indices and WordNet ids are ImageNet-1k's (names are checked against the
    task's class names, :func:`class_names`)."""
    try:
        refs = read_class_list(path)
        problems: list[str] = []
        _indices(Path(path), refs, wnids, problems)
        _raise(Path(path), problems)
    except ClassListError as exc:
        return [str(exc)]
    return []


def class_names(path: Path, imagenet_names: Sequence[str], reference: str,
                wnids: Sequence[str] | None = None) -> tuple[str, ...]:
    """The classes of the list at ``path`` as ``imagenet_names`` (ImageNet-1k's class names in
    index order, from ``reference``, e.g. the ImageNet task's classnames.txt) spells them, in
    the list's order. An index outside 0-999, an unknown WordNet id, a name matching no class
    or two, and a class listed twice are errors naming the file and the lines."""
    path = Path(path)
    if len(imagenet_names) != IMAGENET_1K_CLASSES:
        raise ClassListError(f"class list {path}: {reference} lists {len(imagenet_names)} class "
                             f"names, not ImageNet-1k's {IMAGENET_1K_CLASSES}")
    refs = read_class_list(path)
    problems: list[str] = []
    indices = _indices(path, refs, wnids, problems)
    by_name: dict[str, list[int]] = {}
    for i, name in enumerate(imagenet_names):
        by_name.setdefault(normalise_name(name), []).append(i)
    for ref in refs:
        if ref.name is None:
            continue
        hits = by_name.get(normalise_name(ref.name), [])
        if len(hits) == 1:
            indices[ref.line] = hits[0]
        elif hits:
            problems.append(f"line {ref.line} ({ref.text!r}): matches {len(hits)} classes of "
                            f"{reference} ({[imagenet_names[i] for i in hits]}); give its "
                            f"index instead")
        else:
            close = difflib.get_close_matches(normalise_name(ref.name), list(by_name), n=2)
            problems.append(f"line {ref.line} ({ref.text!r}): no class of {reference} is "
                            f"named so" + (f" (close: {close})" if close else ""))
    first: dict[int, int] = {}
    for ref in refs:
        index = indices.get(ref.line)
        if index is None:
            continue
        if index in first:
            problems.append(f"line {ref.line} ({ref.text!r}): class {index} "
                            f"({imagenet_names[index]!r}) is already on line {first[index]}")
        else:
            first[index] = ref.line
    _raise(path, problems)
    return tuple(imagenet_names[i] for i in first)
