"""Real-text corpora from Debian documentation packages, for the trajectory ground truth.

Two domains, both real writing by people, both installed with apt on a Debian machine:

- **general** (the pre-training text): Perl's documentation (the ``.pod`` pages of ``perl-doc``
  rendered by ``pod2text``, and its module manual pages) and the Linux man-pages project
  (``manpages``, ``manpages-dev``), rendered to plain text by ``groff``;
- **latex** (the fine-tuning domain): the LaTeX sources (``.tex``, ``.tex.gz``) that TeX Live's
  documentation packages ship beside their PDFs: package manuals with mathematics.

The Linux kernel's documentation and CPython's sources and documentation are kept out on
purpose (they are reserved for an independent check): :func:`excluded` drops any path that looks
like either, and the manifest lists what it dropped.

One document per source file. The held-out split is by document: a document is held out when
the first byte of the SHA-256 of its package and path falls below ``eval_share * 256``, so the
split does not depend on file order or on which other files exist. Outputs (gzip with a zero
timestamp, so the bytes are reproducible) and ``manifest.json`` with the package versions, the
counts and the SHA-256 of every file::

    python -m bench.science.debian_corpora --install --out /work/main/.data/science

``--install`` runs ``apt-get install`` first (root); without it the packages must be there.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

GENERAL_PACKAGES = ("perl-doc", "manpages", "manpages-dev")
LATEX_PACKAGES = ("texlive-science-doc", "texlive-latex-recommended-doc", "texlive-latex-base-doc")
FORBIDDEN = (
    re.compile(r"linux-doc|/usr/src/linux|Documentation/", re.IGNORECASE),
    re.compile(r"python", re.IGNORECASE),
)
MIN_CHARS = 400  # shorter files are stubs (a title, an \input line) rather than documents
FILES = ("general_train", "general_eval", "latex_train", "latex_eval")


@dataclass(frozen=True)
class Document:
    """One source file turned into text."""

    package: str
    path: str
    text: str


def excluded(path: str) -> bool:
    """Whether ``path`` looks like kernel or CPython documentation (left out, and listed)."""
    return any(pattern.search(path) for pattern in FORBIDDEN)


def package_files(package: str) -> list[str]:
    """The regular files ``dpkg`` lists for an installed package, sorted."""
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.splitlines() if p.startswith("/") and os.path.isfile(p))


def package_version(package: str) -> str:
    """The installed version of ``package`` (``dpkg-query``)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _read(path: str) -> bytes:
    if path.endswith(".gz"):
        with gzip.open(path) as handle:
            return handle.read()
    return Path(path).read_bytes()


def _decode(raw: bytes) -> str:
    # TeX sources of the 2000s are often Latin-1; UTF-8 first, Latin-1 never fails.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _tidy(text: str) -> str:
    """Drop trailing spaces, collapse runs of blank lines, strip leftover control characters."""
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text.replace("\r\n", "\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def render_man(path: str) -> str | None:
    """A man page as plain text (groff, UTF-8, no overstriking), or None for a ``.so`` alias."""
    source = _decode(_read(path))
    if source.lstrip().startswith(".so "):
        return None  # an alias of another page: its text is already in the corpus
    proc = subprocess.run(
        ["groff", "-t", "-mandoc", "-Tutf8", "-P-cbou", "-rLL=78n", "-rHY=0"],
        input=source.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return _tidy(proc.stdout.decode("utf-8", errors="replace")) if proc.returncode == 0 else None


def render_pod(path: str) -> str | None:
    """A ``.pod`` page as plain text (``pod2text``)."""
    proc = subprocess.run(
        ["pod2text", "--utf8", path], capture_output=True, timeout=120, check=False
    )
    return _tidy(proc.stdout.decode("utf-8", errors="replace")) if proc.returncode == 0 else None


def general_sources() -> Iterator[tuple[str, str, str]]:
    """(package, path, kind) of every general-text source: pods and man pages.

    From ``perl-doc`` the ``.pod`` files and the module pages of section 3 (its section-1 man
    pages are the same pods rendered again, so they are left out).
    """
    for package in GENERAL_PACKAGES:
        for path in package_files(package):
            if path.endswith(".pod"):
                yield package, path, "pod"
            elif re.search(r"/usr/share/man/man\d/[^/]+\.gz$", path):
                if package == "perl-doc" and "/man1/" in path:
                    continue
                yield package, path, "man"


def latex_sources() -> Iterator[tuple[str, str, str]]:
    """(package, path, kind) of every LaTeX source in the TeX Live documentation packages."""
    for package in LATEX_PACKAGES:
        for path in package_files(package):
            if path.endswith((".tex", ".tex.gz")):
                yield package, path, "tex"


def _load(item: tuple[str, str, str]) -> Document | None:
    package, path, kind = item
    if kind == "pod":
        text = render_pod(path)
    elif kind == "man":
        text = render_man(path)
    else:
        text = _tidy(_decode(_read(path)))
    if text is None or len(text) < MIN_CHARS:
        return None
    return Document(package, path, text)


def collect(sources: Iterable[tuple[str, str, str]], workers: int) -> list[Document]:
    """Render every source (in parallel: groff and pod2text are subprocesses), drop duplicates."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        docs = [d for d in pool.map(_load, list(sources)) if d is not None]
    seen: set[str] = set()
    unique = []
    for doc in sorted(docs, key=lambda d: (d.package, d.path)):
        digest = hashlib.sha256(doc.text.encode()).hexdigest()
        if digest not in seen:  # the same page shipped twice (e.g. a .tex and its .tex.gz copy)
            seen.add(digest)
            unique.append(doc)
    return unique


def held_out(doc: Document, eval_share: float) -> bool:
    """Whether ``doc`` belongs to the held-out split (a hash of package and path)."""
    first = hashlib.sha256(f"{doc.package}:{doc.path}".encode()).digest()[0]
    return first < round(eval_share * 256)


def write_jsonl_gz(path: Path, docs: list[Document]) -> str:
    """Write ``{"text", "source"}`` lines, gzip with mtime 0; return the file's SHA-256."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        for doc in docs:
            line = {"text": doc.text, "source": f"{doc.package}:{doc.path}"}
            gz.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
    data = buffer.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_jsonl_gz(path: Path, limit: int | None) -> list[str]:
    """The ``text`` field of each line (at most ``limit`` lines)."""
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            if limit is not None and len(texts) >= limit:
                break
    return texts


def install(packages: Iterable[str]) -> None:
    """``apt-get install`` the packages (root; no recommends, so TeX Live stays small)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    subprocess.run(cmd, check=True, env=env)


def build(out: Path, *, eval_share: float, workers: int) -> dict[str, object]:
    """Build the four files and the manifest under ``out``; returns the manifest."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    sources = {"general": list(general_sources()), "latex": list(latex_sources())}
    dropped = sorted(
        f"{pkg}:{path}" for items in sources.values() for pkg, path, _ in items if excluded(path)
    )
    domains = {
        name: collect([s for s in items if not excluded(s[1])], workers)
        for name, items in sources.items()
    }
    manifest: dict[str, object] = {
        "command": " ".join(["python -m bench.science.debian_corpora", *sys.argv[1:]]),
        "packages": {p: package_version(p) for p in (*GENERAL_PACKAGES, *LATEX_PACKAGES)},
        "debian": Path("/etc/debian_version").read_text().strip()
        if Path("/etc/debian_version").is_file()
        else None,
        "eval_share": eval_share,
        "min_chars": MIN_CHARS,
        "renderers": {
            "groff": subprocess.run(
                ["groff", "--version"], capture_output=True, text=True
            ).stdout.splitlines()[0],
            "pod2text": "perl " + package_version("perl"),
        },
        "excluded_paths": dropped,
        "files": {},
    }
    files: dict[str, object] = {}
    for domain, docs in domains.items():
        for split in ("train", "eval"):
            part = [d for d in docs if held_out(d, eval_share) == (split == "eval")]
            name = f"{domain}_{split}.jsonl.gz"
            digest = write_jsonl_gz(out / name, part)
            per_package: dict[str, int] = {}
            for d in part:
                per_package[d.package] = per_package.get(d.package, 0) + 1
            files[name] = {
                "documents": len(part),
                "characters": sum(len(d.text) for d in part),
                "bytes": (out / name).stat().st_size,
                "sha256": digest,
                "documents_per_package": per_package,
            }
    manifest["files"] = files
    manifest["seconds"] = time.perf_counter() - started
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    """Parse, optionally install the packages, build the corpora."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .jsonl.gz files")
    parser.add_argument("--install", action="store_true", help="apt-get install the packages")
    parser.add_argument("--eval-share", type=float, default=0.1, help="held-out share (by hash)")
    parser.add_argument("--workers", type=int, default=2, help="parallel renderers")
    args = parser.parse_args()
    if not 0 < args.eval_share < 1:
        parser.error("--eval-share must be between 0 and 1, e.g. 0.1")
    if args.install:
        install((*GENERAL_PACKAGES, *LATEX_PACKAGES))
    manifest = build(args.out, eval_share=args.eval_share, workers=args.workers)
    print(json.dumps(manifest["files"], indent=1))


if __name__ == "__main__":
    main()
