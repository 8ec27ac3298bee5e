"""Documentation checks (fast, no Spark): the docs name files that exist, point nowhere outside
the repository, name real make targets, and the Airflow pin agrees between setup.py and the Makefile."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Files whose repo-relative paths must exist.
PATH_DOCS = ("README.md", "bench/quality/README.md", "Makefile")
TOP_FOLDERS = ("conf", "jobs", "bench", "tsa_lib", "tests", "docs")
# A token that starts with one of the top-level folders, backticked or bare; not part of a
# longer path or URL (no word character, '/', '.', '-' or '$' right before it).
PATH_RE = re.compile(r"(?<![\w/.\-$])((?:%s)/[\w.*/\-]*[\w*])" % "|".join(TOP_FOLDERS))

# Where outside references are forbidden, and in which files.
SCAN_ROOTS = ("README.md", "docs", "bench", "conf", "tsa_lib")
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".sh"}
SKIP_DIRS = {"__pycache__", ".git", ".venv"}
FORBIDDEN = [
    ("DESIGN.md", re.compile(r"DESIGN\.md")),
    ("seeds/", re.compile(r"(?<![\w\-])seeds/")),
    ("../shared", re.compile(r"\.\./shared")),
    ("/work/ absolute path", re.compile(r"(?<![\w./\-])/work/")),
    ("issue <number>", re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)),
]


def _named_paths(text: str) -> set[str]:
    out = set()
    for m in PATH_RE.finditer(text):
        p = m.group(1).split("::")[0].rstrip(".")
        out.add(p)
    return out


def _exists(rel: str) -> bool:
    if any(ch in rel for ch in "*?["):
        return bool(glob.glob(str(ROOT / rel)))
    return (ROOT / rel).exists()


@pytest.mark.parametrize("doc", PATH_DOCS)
def test_named_paths_exist(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    named = _named_paths(text)
    assert named, f"{doc}: no repo paths found (the regex is broken?)"
    missing = sorted(p for p in named if not _exists(p))
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def _text_files() -> list[Path]:
    files: list[Path] = []
    for root in SCAN_ROOTS:
        p = ROOT / root
        if p.is_file():
            files.append(p)
            continue
        if not p.is_dir():
            continue
        for f in sorted(p.rglob("*")):
            rel_parts = f.relative_to(ROOT).parts
            if any(part in SKIP_DIRS for part in rel_parts):
                continue
            if f.is_file() and f.suffix in TEXT_SUFFIXES:
                files.append(f)
    return files


def test_no_references_outside_the_repository() -> None:
    files = _text_files()
    assert any(f.name == "README.md" for f in files)
    problems = []
    for f in files:
        for lineno, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for what, rx in FORBIDDEN:
                if rx.search(line):
                    problems.append(f"{f.relative_to(ROOT)}:{lineno}: {what}: {line.strip()[:120]}")
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


def _makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-/$()]+(?:\s+[A-Za-z0-9_.\-/$()]+)*)\s*:(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def _make_targets_in(text: str) -> set[str]:
    """`make X` inside inline code or fenced code blocks (prose such as "make sure" is not a command)."""
    code = re.findall(r"```.*?```", text, flags=re.DOTALL)
    rest = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    code += re.findall(r"`([^`\n]+)`", rest)
    found = set()
    for chunk in code:
        for m in re.finditer(r"(?:^|[\s;&|(])make((?:[ \t]+[^\s;&|#`]+)*)", chunk, flags=re.MULTILINE):
            for word in m.group(1).split():
                if word.startswith("-"):
                    continue          # an option such as -j4
                if not re.fullmatch(r"[A-Za-z][\w.\-]*", word):
                    break             # VAR=value, a quoted argument: no more targets
                found.add(word)
    return found


def test_make_targets_in_readme_exist() -> None:
    named = _make_targets_in((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {"demo", "test"} <= named, named
    missing = sorted(named - _makefile_targets())
    assert not missing, f"README.md names make targets the Makefile lacks: {missing}"


def test_airflow_pin_agrees() -> None:
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    in_setup = re.findall(r"[\"'](apache-airflow[^\"']*)[\"']", setup)
    in_make = re.findall(r"(apache-airflow[^\s\"']*)", make)
    assert in_setup, "setup.py: no apache-airflow requirement"
    assert in_make, "Makefile: no apache-airflow requirement"

    def norm(spec: str) -> str:
        return re.sub(r"\s+", "", spec).rstrip(",")

    assert {norm(s) for s in in_setup} == {norm(s) for s in in_make}, (in_setup, in_make)
