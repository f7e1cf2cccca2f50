"""What the configs and docs say a paper did must be in the paper's text.

Two checks on the shipped configs' comments, the README and docs/mgran.md (the documents that
discuss the papers):
* every quotation of four words or more appears word for word in one of the papers under
  /work/shared/papers (or the copy named by $REID_PAPERS_DIR), unless it is (the start of)
  one of our own section titles or a message of our own code;
* a sentence saying what precision a paper trained in names a precision the papers mention.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The papers' texts: $REID_PAPERS_DIR, else shared/papers beside the checkout (as CI lays it), else /work/shared/papers.
PAPERS = Path(os.environ.get("REID_PAPERS_DIR") or next(
    (p for p in (REPO.parent / "shared" / "papers", Path("/work/shared/papers")) if p.is_dir()), REPO.parent / "shared" / "papers"))
LIGATURES = {"\ufb01": "fi", "\ufb02": "fl", "\ufb00": "ff", "\ufb03": "ffi", "\ufb04": "ffl", "\u2019": "'", "\u00d7": "x"}


def normalise(text: str) -> str:
    for a, b in LIGATURES.items():
        text = text.replace(a, b)
    text = re.sub(r"-\s*\n\s*", "-", text)  # a word broken at a line end keeps its hyphen in these papers
    return re.sub(r"\s+", " ", text).strip().lower()


def documents() -> dict[str, str]:
    """Config comment text (one string per file) and the markdown docs."""
    out = {}
    for path in sorted((REPO / "reid_train" / "configs").glob("*.yaml")):
        comments = [line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line]
        out[str(path.relative_to(REPO))] = "\n".join(comments)
    for path in (REPO / "README.md", REPO / "docs" / "mgran.md"):
        out[str(path.relative_to(REPO))] = path.read_text()
    return out


def quotations(text: str) -> list[str]:
    return [q for q in re.findall(r'"([^"\n]+(?:\n[^"\n]+)*)"', text) if len(q.split()) >= 4]


def said_by_our_code(quote: str, source: str) -> bool:
    """``quote`` (a trailing '...' cut) is in our source, an f-string field standing for any one word."""
    words = quote.rstrip(". ").split()
    pattern = r"\s+".join(rf"(?:{re.escape(w)}|\{{[^}}\s]*\}})" for w in words)
    return re.search(pattern, source) is not None


@pytest.fixture(scope="module")
def papers() -> str:
    if not PAPERS.is_dir():
        pytest.skip(f"paper texts not found in {PAPERS} (set REID_PAPERS_DIR)")
    return " \n ".join(normalise(p.read_text(encoding="utf-8")) for p in sorted(PAPERS.glob("*")) if p.suffix in (".txt", ".md"))


def test_quotations_are_the_papers_words(papers: str) -> None:
    docs = documents()
    markdown = [p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")]]
    headings = {normalise(re.sub(r"\s*\(`.*`\)$", "", m)) for text in markdown for m in re.findall(r"^#+\s*(.+)$", text, re.M)}
    ours = normalise(" ".join(p.read_text() for pkg in ("reid_train", "reid_masks") for p in (REPO / pkg).rglob("*.py")))
    wrong = []
    for name, text in docs.items():
        for q in quotations(text):
            n = normalise(q)
            if any(h.startswith(n) for h in headings) or n in papers or said_by_our_code(n, ours):
                continue
            wrong.append(f"{name}: \"{' '.join(q.split())}\"")
    assert not wrong, "quoted but not in the papers' text:\n" + "\n".join(wrong)


def test_no_precision_is_attributed_to_a_paper(papers: str) -> None:
    """'the paper trained in float32' was written without the papers saying so."""
    claim = re.compile(r"papers? (?:was |were )?trained (?:in|with) (float32|fp32|fp16|float16|bf16|bfloat16|mixed precision)")
    found = [(name, m.group(0)) for name, text in documents().items() for m in claim.finditer(normalise(text))]
    unsupported = [f"{name}: {c}" for name, c in found if c.split()[-1] not in papers]
    assert not unsupported, "precision attributed to a paper that does not state it:\n" + "\n".join(unsupported)


def test_the_checks_catch_a_made_up_claim(papers: str) -> None:
    """The two rules above fail on the sentences they were written for."""
    assert normalise("the paper trained in float32").split()[-1] not in papers
    assert normalise("replaces region-level feature alignment with part-level feature alignment") not in papers
    assert normalise("we replace region-level feature alignment in MGRAN with part-level feature alignment") in papers
