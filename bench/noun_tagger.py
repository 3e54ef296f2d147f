"""Benchmark: how close capmix's noun counts (Figure 12) are to NLTK's.

The paper counts unique nouns with NLTK's part-of-speech tagger (``nltk.pos_tag``, the
averaged perceptron). Its model is not on PyPI, so capmix tags with the Brill tagger that
textblob ships (:func:`capmix.textstats.nouns`). This script measures the difference, given
NLTK's model and a hand-tagged corpus from NLTK's data repository (not shipped with capmix;
``git show`` them out of a clone of github.com/nltk/nltk_data and unzip):

  --perceptron DIR/averaged_perceptron_tagger/averaged_perceptron_tagger.pickle
  --treebank   DIR/treebank/tagged        (the Penn Treebank sample: 3,914 hand-tagged
                                           WSJ sentences, *.pos)
  --captions   FILE.parquet ...            (caption sets: a `caption` column)

It prints, as JSON: on the treebank, each tagger's precision and recall of "noun" (NN, NNS,
NNP, NNPS) against the hand tags; on each caption set, the unique nouns each pipeline counts
(NLTK: NLTK's Treebank-style word tokenizer + the perceptron, as ``nltk.pos_tag(
nltk.word_tokenize(text))`` does; capmix: :func:`capmix.textstats.unique_nouns`), the
overlap of the two noun sets, and the share of captions whose noun lists agree.

The pickle is read with an unpickler that builds only dicts, lists, sets, tuples and
numbers (no code runs from it).

    .venv/bin/python bench/noun_tagger.py --perceptron ... --treebank ... \\
        --captions results/toy_default/captions/raw/round_0/*.parquet
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from capmix.textstats import NOUN_TAGS, nouns  # noqa: E402


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain containers only: the perceptron's (weights, tagdict, classes)."""

    ALLOWED = {("builtins", "set"), ("builtins", "dict"), ("builtins", "list"),
               ("builtins", "tuple"), ("collections", "defaultdict"), ("builtins", "float"),
               ("builtins", "int")}

    def find_class(self, module: str, name: str):
        if module == "__builtin__":  # NLTK's pickle was written by Python 2
            module = "builtins"
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return {"set": set, "dict": dict, "list": list, "tuple": tuple, "float": float,
                "int": int, "defaultdict": defaultdict}[name]


def nltk_tagger(path: Path):
    from nltk.tag.perceptron import PerceptronTagger

    with open(path, "rb") as handle:
        weights, tagdict, classes = _PlainUnpickler(handle).load()
    tagger = PerceptronTagger(load=False)
    tagger.model.weights, tagger.tagdict, tagger.classes = weights, tagdict, set(classes)
    tagger.model.classes = tagger.classes
    return tagger


def treebank_sentences(directory: Path) -> list[list[tuple[str, str]]]:
    """The hand-tagged sentences of the Penn Treebank sample (*.pos: word/TAG tokens;
    brackets mark chunks; a sentence ends at a token tagged '.')."""
    sentences, current = [], []
    for path in sorted(directory.glob("*.pos")):
        for token in path.read_text(encoding="utf-8").split():
            if token in ("[", "]") or token.startswith("====="):
                continue
            word, _, tag = token.rpartition("/")
            if not word:
                continue
            current.append((word.replace("\\/", "/"), tag.split("|")[0]))
            if tag == ".":
                sentences.append(current)
                current = []
    if current:
        sentences.append(current)
    return sentences


def noun_scores(gold: list[bool], predicted: list[bool]) -> dict[str, float]:
    tp = sum(g and p for g, p in zip(gold, predicted, strict=True))
    fp = sum(p and not g for g, p in zip(gold, predicted, strict=True))
    fn = sum(g and not p for g, p in zip(gold, predicted, strict=True))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {"precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / (precision + recall), 4)}


def on_treebank(directory: Path, tagger) -> dict:
    from textblob.en import tag as pattern_tag

    sentences = treebank_sentences(directory)
    gold, ours, theirs = [], [], []
    for sentence in sentences:
        words = [w for w, _ in sentence]
        gold += [t in NOUN_TAGS for _, t in sentence]
        # Both taggers on the corpus's own tokens, so tags compare one to one.
        ours += [t in NOUN_TAGS for _, t in pattern_tag(" ".join(words), tokenize=False)]
        theirs += [t in NOUN_TAGS for _, t in tagger.tag(words)]
    return {"sentences": len(sentences), "tokens": len(gold),
            "nltk_perceptron": noun_scores(gold, theirs), "capmix_pattern": noun_scores(gold, ours),
            "token_agreement": round(sum(a == b for a, b in zip(ours, theirs, strict=True))
                                     / len(gold), 4)}


def on_captions(paths: list[Path], tagger) -> dict:
    import pandas as pd
    from nltk.tokenize import NLTKWordTokenizer

    tokenizer = NLTKWordTokenizer()
    texts = [t for p in paths for t in pd.read_parquet(p, columns=["caption"])["caption"]
             if isinstance(t, str)]
    same, theirs_all, ours_all = 0, set(), set()
    for text in texts:
        theirs = [w.lower() for w, t in tagger.tag(tokenizer.tokenize(text))
                  if t in NOUN_TAGS and any(c.isalpha() for c in w)]
        ours = nouns(text)
        same += sorted(theirs) == sorted(ours)
        theirs_all.update(theirs)
        ours_all.update(ours)
    return {"captions": len(texts), "unique_nouns_nltk": len(theirs_all),
            "unique_nouns_capmix": len(ours_all),
            "relative_difference": round(len(ours_all) / len(theirs_all) - 1, 4),
            "jaccard": round(len(ours_all & theirs_all) / len(ours_all | theirs_all), 4),
            "captions_with_same_nouns": round(same / len(texts), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perceptron", type=Path, required=True)
    parser.add_argument("--treebank", type=Path)
    parser.add_argument("--captions", type=Path, nargs="*", default=[])
    parser.add_argument("--label", action="append", default=[],
                        help="NAME=GLOB: a caption set to measure (repeatable)")
    args = parser.parse_args()
    tagger = nltk_tagger(args.perceptron)
    report: dict = {}
    if args.treebank:
        report["treebank"] = on_treebank(args.treebank, tagger)
    if args.captions:
        report["captions"] = on_captions(args.captions, tagger)
    for label in args.label:
        name, _, pattern = label.partition("=")
        files = sorted(Path().glob(pattern))
        report[name] = on_captions(files, tagger)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
