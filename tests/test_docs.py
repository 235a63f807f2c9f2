"""What users read cites public sources only: no internal document codes (book chapters "B6",
"B13 Eq. 13.4"; seed papers "S000", "S001"; internal notes ALGORITHMS.md, PEERS.md,
DESIGN.md) and no paths into the developers' folder beside the repository ("../shared/...").
Papers are cited by authors, year and title (docs/references.md), data sets by their public
name and download place (docs/datasets.md)."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INTERNAL = re.compile(r"""
    # a book-chapter code: B1..B19 as a word, but not "Fig. B2", "Table B1", "Appendix B3", a
    # Strukturbericht type ("the B2 structure", "B1-type"), hex digits or names like B3LYP
    (?<![\w.*>])(?<!Fig\.\s)(?<!Table\s)(?<!Appendix\s)B(?:1[0-9]|[1-9])(?![\w\-\[])
        (?!\s(?:structure|phase|lattice))
  | \bS0[0-9]{2}\b                                  # seed-paper codes
  | \b(?:ALGORITHMS|PEERS|DESIGN)\.md\b             # internal notes
  | \.\./shared\b | /work/shared\b | \bshared/(?:data|docs|seeds)\b   # the developers' folder
  | \bseed\ (?:papers?|files?|documents?)\b
""", re.X)


def _user_facing_files():
    patterns = ["README.md", "docs/*.md", "potentials/*.md", "benchmarks/*.py", "benchmarks/README.md",
                "tests/data/README.md", "tests/data/make_test_data.py", "md_examples/**/*.py",
                "md_examples/**/*.md", "ase_mlff/**/*.py", "ase_mlff/**/*.cpp", "ase_mlff/**/*.hpp"]
    files = set()
    for pattern in patterns:
        files.update(glob.glob(os.path.join(ROOT, pattern), recursive=True))
    return sorted(files)


def _cpp_comments(text: str) -> str:
    """The comments of a C++ file (its code has variables such as ``B1`` that are not citations)."""
    return "\n".join(m.group(0) for m in re.finditer(r"//[^\n]*|/\*.*?\*/", text, re.S))


def _hits(text: str) -> list[str]:
    return [m.group(0) for m in INTERNAL.finditer(text)]


def test_the_pattern_finds_internal_codes_and_spares_real_names():
    for text in ("B13 Eq. 13.4", "(B6 §6.2; the projected process)", "B13's choice", "as in B11 (Schütt",
                 "S001's TL1", "see ALGORITHMS.md §3", "(PEERS.md trap)", "../shared/data/rmd17/x.npz",
                 "/work/shared/data/deepmd_water", "shared/docs/PEERS.md", "both from the seed papers"):
        assert _hits(text), text
    for text in ("B3LYP U0", "bulk modulus B = 271 GPa, B0", "Fig. B2 of the paper", "Table B1", "the B2 structure",
                 "a B1-type rock salt", "0xB1", "in.B1 = b1.data()", "*B1;", "B2[v]", "Hellström & Behler 2020, Eq. 13.4",
                 "the shared trainer", "a shared machine", "seed 0"):
        assert not _hits(text), text


def test_user_facing_files_cite_public_sources_only():
    offenders = []
    for path in _user_facing_files():
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if path.endswith((".cpp", ".hpp")):
            text = _cpp_comments(text)
        for lineno, line in enumerate(text.splitlines(), start=1):
            for hit in _hits(line):
                offenders.append(f"{os.path.relpath(path, ROOT)}:{lineno}: {hit!r} in {line.strip()[:100]!r}")
    assert not offenders, "internal codes or paths in user-facing files:\n" + "\n".join(offenders)


def _every_help(parser, prefix="ase-mlff"):
    yield prefix, parser.format_help()
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield from _every_help(sub, f"{prefix} {name}")


def test_command_help_cites_public_sources_only():
    from ase_mlff.cli import build_parser

    helps = dict(_every_help(build_parser()))
    assert "ase-mlff train schnet" in helps and "ase-mlff train bpnn" in helps and "ase-mlff fit-head" in helps
    offenders = {cmd: _hits(text) for cmd, text in helps.items() if _hits(text)}
    assert not offenders, offenders


@pytest.mark.parametrize("name", ["references.md", "datasets.md"])
def test_the_docs_that_name_the_sources_exist_and_are_linked(name):
    assert os.path.exists(os.path.join(ROOT, "docs", name))
    linked = [p for p in glob.glob(os.path.join(ROOT, "docs", "*.md")) + glob.glob(os.path.join(ROOT, "potentials", "*.md"))
              if name in open(p, encoding="utf-8").read()]
    assert linked, f"no page links to docs/{name}"
