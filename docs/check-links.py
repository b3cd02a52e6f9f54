"""Link checks for the book that linkchecker does not do itself.

    check-links.py linkchecker ARGS...   run linkchecker's command line
    check-links.py markdown FILE...      check the relative links of FILEs

`linkchecker`: linkchecker (PyPI) switches its effective user to "nobody"
when run as root, and then cannot read a checkout in a private folder (CI
runs as root in a fresh clone). This runs its own command line with that
one step left out; everything else is linkchecker as installed.

`markdown`: the front page, CONTRIBUTING.md and deploy/README.md are read on
GitHub, not in the book, and link into docs/src/. Each relative link must
reach a file; a link to a book page with an #anchor must name an id of the
built page (docs/book/). Also checks that every page under docs/src/ was
built, that is, that SUMMARY.md lists it.
"""

import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SRC = os.path.join(ROOT, "docs", "src")
BOOK = os.path.join(ROOT, "docs", "book")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def run_linkchecker(args):
    from linkcheck.command import linkchecker as command

    command.drop_privileges = lambda: None
    sys.argv = ["linkchecker", *args]
    command.linkchecker()
    return 0


def links(path):
    """(line number, target) of every inline link outside code."""
    fenced = False
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                continue
            line = re.sub(r"`[^`]*`", "", line)
            for m in LINK.finditer(line):
                yield n, m.group(1)


def ids(html):
    with open(html, encoding="utf-8") as f:
        return set(re.findall(r'\bid="([^"]+)"', f.read()))


def check_markdown(files):
    bad = []
    for name in files:
        path = os.path.join(ROOT, name)
        for n, target in links(path):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            file, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(path), file))
            where = f"{name}:{n}: {target}"
            if not os.path.exists(full):
                bad.append(f"{where}: no such file or folder")
                continue
            if anchor and full.startswith(SRC + os.sep) and full.endswith(".md"):
                page = os.path.join(BOOK, os.path.relpath(full, SRC))[: -len(".md")] + ".html"
                if anchor not in ids(page):
                    bad.append(f"{where}: no anchor #{anchor} in the built page")
        print(f"ok   {name}" if not any(b.startswith(name + ":") for b in bad) else f"FAIL {name}")
    for dirpath, _, names in os.walk(SRC):
        for page in names:
            if page.endswith(".md") and page != "SUMMARY.md":
                rel = os.path.relpath(os.path.join(dirpath, page), SRC)
                if not os.path.exists(os.path.join(BOOK, rel[: -len(".md")] + ".html")):
                    bad.append(f"docs/src/{rel}: not in the book (add it to docs/src/SUMMARY.md)")
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("linkchecker", "markdown"):
        sys.exit(__doc__)
    if sys.argv[1] == "linkchecker":
        sys.exit(run_linkchecker(sys.argv[2:]))
    sys.exit(check_markdown(sys.argv[2:]))
