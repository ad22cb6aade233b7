"""The README and the pages in docs/ stay true to the code: every relative
link (and its #anchor) resolves, and every command they show names only
flags its parser knows, as do the benchmarks' docstrings and the command
lines recorded above the raw figures."""

import argparse
import importlib
import pathlib
import re
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PAGES = sorted(
    [REPO / "README.md", REPO / "benchmarks" / "README.md"]
    + list((REPO / "docs").glob("*.md"))
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`]+)`")
# A command: `python -m nasfpn_tf.<module>` or a benchmark script.
COMMAND = re.compile(
    r"python -m (?P<module>nasfpn_tf(?:\.\w+)+)"
    r"|(?:benchmarks/)?(?P<script>\w+)\.py\b"
)
FLAG = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")
# Where a command's own flags end: a pipe, redirect, comment, next command.
END = re.compile(r"[|>#;]|&&|\$\(")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {
        slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_exists(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or anchor and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def option_strings(command: str) -> set[str]:
    """The flags the parser of ``command`` (a module or script name) takes:
    its `main` is run until it parses, then stopped."""
    name = command if "." in command else f"benchmarks.{command}"
    module = importlib.import_module(name)

    def stop(parser, *args, **kwargs):
        raise _Parsed(parser)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = stop
    try:
        module.main(["prog"] if name == "nasfpn_tf.main" else [])
    except _Parsed as parsed:
        return set(parsed.parser._option_string_actions)
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{name}.main returned without parsing flags")


def logical_lines(text: str):
    """Shell lines with their continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def commands(text: str):
    """(command, flags) of each command line in ``text``: fenced blocks
    line by line ($ARGS expanded from an ARGS="..." line before it) and
    inline code spans."""
    chunks = []
    for block in FENCE.findall(text):
        chunks += logical_lines(block)
    prose = FENCE.sub("", text)
    chunks += [" ".join(span.split()) for span in INLINE.findall(prose)]
    shared = ""
    for chunk in chunks:
        if chunk.lstrip().startswith("ARGS="):
            shared = chunk
            continue
        chunk = chunk.replace("$ARGS", shared)
        matches = list(COMMAND.finditer(chunk))
        for match, after in zip(matches, matches[1:] + [None]):
            name = match.group("module") or match.group("script")
            if (
                match.group("script")
                and not (REPO / "benchmarks" / f"{name}.py").exists()
            ):
                continue
            rest = chunk[match.end() : after.start() if after else None]
            rest = END.split(rest)[0]
            yield name, FLAG.findall(rest)


def documented_commands():
    sources = [(p, p.read_text()) for p in PAGES]
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        text = script.read_text()
        doc = re.match(r'\s*(?:#.*\n)*\s*"""(.*?)"""', text, re.DOTALL)
        # A docstring's commands are indented lines, not fenced.
        body = doc.group(1) if doc else ""
        sources.append((script, f"```\n{body}\n```\n"))
    for raw in sorted((REPO / "docs" / "figures").glob("*.txt")):
        header = [
            line for line in raw.read_text().splitlines() if line[:1] == "#"
        ]
        sources.append((raw, "```\n" + "\n".join(header) + "\n```\n"))
    found = {}
    for path, text in sources:
        for name, flags in commands(text):
            where = str(path.relative_to(REPO))
            for flag in flags:
                found.setdefault((name, flag), where)
    return found


def test_documented_commands_name_only_flags_their_parsers_take():
    found = documented_commands()
    assert ("nasfpn_tf.main", "--mode") in found  # the scan sees commands
    assert ("search_cost", "--samples_full") in found
    known = {}
    unknown = []
    for (name, flag), where in sorted(found.items()):
        if name not in known:
            known[name] = option_strings(name)
        if flag not in known[name]:
            unknown.append(f"{where}: {name} {flag}")
    assert not unknown, "\n".join(unknown)


def test_the_scan_sees_a_renamed_flag():
    text = (
        "```bash\n"
        'ARGS="--train-steps 5"\n'
        "python benchmarks/search_cost.py $ARGS \\\n"
        "    --samples-full 6 | tee out  # --not_a_flag\n"
        "```\n"
        "and `python -m nasfpn_tf.main --mode=search`.\n"
    )
    assert list(commands(text)) == [
        ("search_cost", ["--train-steps", "--samples-full"]),
        ("nasfpn_tf.main", ["--mode"]),
    ]
    assert "--samples-full" not in option_strings("search_cost")
    assert "--samples_full" in option_strings("search_cost")
