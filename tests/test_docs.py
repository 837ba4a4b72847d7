"""The guide in docs/ and the README: every Python sample runs, every link resolves, and
``mkdocs build --strict`` passes.

Each ```` ```python ```` fenced block of ``docs/*.md`` and ``README.md`` is run as a script in a
fresh interpreter and must exit with 0. A block whose preceding line is an HTML comment
``<!-- no-test: REASON -->`` is not run; the reason is required (use it only for samples that
cannot run here, e.g. ones needing a cluster or a second machine, or deliberately broken ones).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from _scripts import run_script

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SAMPLE_TIMEOUT = 90  # seconds per sample; pytest-timeout stops the test at 120

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_NO_TEST = re.compile(r"^\s*<!--\s*no-test\b\s*:?\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Sample:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip_reason: str | None  # None: run it; "" would mean a marker without a reason

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def markdown_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def code_blocks(path: Path) -> list[Sample]:
    """Every fenced code block of *path*, with the no-test marker of the line before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        lang = info.split()[0].lower() if info else ""
        start = i
        body = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence) \
                    and not close["info"].strip():
                break
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = _NO_TEST.match(lines[prev]) if prev >= 0 else None
        reason = marker["reason"] if marker else None
        blocks.append(Sample(path, start + 1, lang, "\n".join(body) + "\n", reason))
    return blocks


def python_samples() -> list[Sample]:
    return [b for p in markdown_files() for b in code_blocks(p) if b.lang in ("python", "py")]


SAMPLES = python_samples()


def test_samples_found() -> None:
    # Guards the extractor: the guide has many samples, and each page below has some.
    assert len(SAMPLES) >= 20, [s.id for s in SAMPLES]
    pages = {s.path.name for s in SAMPLES}
    for page in ("index.md", "quickstart.md", "migrating.md", "pools.md", "shared-state.md",
                 "troubleshooting.md"):
        assert page in pages, f"no python sample found in docs/{page}"


def test_no_test_markers_give_a_reason() -> None:
    unexplained = [s.id for s in SAMPLES if s.skip_reason == ""]
    assert not unexplained, f"<!-- no-test: REASON --> needs a reason: {unexplained}"


def test_extractor_handles_markers_and_indented_fences(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- no-test: needs a cluster -->\n```python\nimport dask\n```\n\n"
        "* item\n\n    ```python\n    print('indented')\n    ```\n\n"
        "````markdown\n```python\nnot a block of its own\n```\n````\n"
    )
    blocks = code_blocks(page)
    assert [(b.lang, b.skip_reason) for b in blocks] == [
        ("python", "needs a cluster"), ("python", None), ("markdown", None)]
    assert blocks[1].code == "print('indented')\n"
    assert "not a block of its own" in blocks[2].code


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_sample_runs(sample: Sample, tmp_path: Path) -> None:
    if sample.skip_reason is not None:
        pytest.skip(f"marked no-test: {sample.skip_reason}")
    proc = run_script(tmp_path, sample.code, name="sample.py", timeout=SAMPLE_TIMEOUT)
    assert proc.returncode == 0, (
        f"{sample.id}: exit code {proc.returncode}\n--- code\n{sample.code}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


# -- links ----------------------------------------------------------------------------------


def _slug(text: str) -> str:
    """Python-Markdown's toc slug (what MkDocs uses for heading anchors)."""
    text = re.sub(r"`|\*\*?|\[([^\]]*)\]\([^)]*\)", r"\1", text)  # code, emphasis, links
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown page (outside code blocks)."""
    fenced = {n for b in code_blocks(path)
              for n in range(b.line, b.line + b.code.count("\n") + 2)}
    found = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and n not in fenced:
            found.add(_slug(m.group(1)))
    return found


def test_links_between_pages_resolve() -> None:
    """Every relative link in docs/ names an existing page, and its #anchor a heading there."""
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        fenced = {n for b in code_blocks(page)
                  for n in range(b.line, b.line + b.code.count("\n") + 2)}
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if n in fenced:
                continue
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z]+:", target):
                    continue  # http:, https:, mailto:
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part) if file_part else page
                if not dest.is_file():
                    broken.append(f"{page.name}:{n}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    broken.append(f"{page.name}:{n}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.name for p in DOCS.glob("*.md") if not re.search(rf":\s*{re.escape(p.name)}\s*$",
                                                                  nav, re.M)]
    assert not missing, f"pages missing from the nav of mkdocs.yml: {missing}"


# -- mkdocs ---------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()
