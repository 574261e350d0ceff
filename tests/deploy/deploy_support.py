"""Parsers for the deployment files: PromQL selectors, Dockerfiles, .dockerignore, compose.

Small and strict on purpose: enough to find the metric names, label matchers, commands and
paths that tests/deploy checks against the real repository and a real server.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LABELS = ["cat", "dog", "red car"]  # candidate labels of the test traffic
API_KEY = "deploy-test-key-6c1f0e"  # the live server's one named key ("deploy-test")

# ------------------------------------------------------------------------------------ PromQL

_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass
class Selector:
    metric: str | None
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)


@dataclass
class Query:
    selectors: list[Selector]
    grouping: set[str]  # labels named in by/without/on/ignoring/group_* clauses


def _skip_string(expr: str, i: int) -> int:
    quote, i = expr[i], i + 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" else 1
    return i + 1


def _matchers(block: str) -> list[tuple[str, str, str]]:
    found, pos = [], 0
    while pos < len(block):
        match = _MATCHER.match(block, pos)
        if not match:
            if block[pos:].strip():
                raise ValueError(f"cannot parse label matchers {{{block}}}")
            break
        found.append((match[1], match[2], match[3].encode().decode("unicode_escape")))
        pos = match.end()
    return found


def parse_promql(expr: str) -> Query:
    """The metric selectors and grouping labels of a PromQL expression."""
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i, n = 0, len(expr)
    previous_metric: Selector | None = None
    while i < n:
        ch = expr[i]
        if ch in "\"'`":
            i = _skip_string(expr, i)
        elif ch == "{":
            end = i + 1
            while end < n and expr[end] != "}":
                end = _skip_string(expr, end) if expr[end] == '"' else end + 1
            matchers = _matchers(expr[i + 1:end])
            if previous_metric is not None:
                previous_metric.matchers = matchers
            else:
                selectors.append(Selector(None, matchers))
            previous_metric, i = None, end + 1
        elif ch == "[":
            i = expr.index("]", i) + 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and expr[i + 1].isdigit()):
            match = re.compile(r"[0-9.eE+x]+[a-zA-Z]*").match(expr, i)
            i = match.end() if match else i + 1
            previous_metric = None
        elif _IDENT.match(expr, i):
            word = _IDENT.match(expr, i)[0]
            i += len(word)
            rest = expr[i:].lstrip()
            if word in _GROUPING:
                if rest.startswith("("):
                    start = expr.index("(", i)
                    end = expr.index(")", start)
                    grouping |= {w.strip() for w in expr[start + 1:end].split(",") if w.strip()}
                    i = end + 1
                previous_metric = None
            elif word in _KEYWORDS or rest.startswith("(") or (
                    word in _AGGREGATIONS and _IDENT.match(rest)
                    and _IDENT.match(rest)[0] in {"by", "without"}):
                previous_metric = None
            else:
                previous_metric = Selector(word)
                selectors.append(previous_metric)
        else:
            if not ch.isspace():
                previous_metric = None
            i += 1
    return Query(selectors, grouping)


def regex_alternatives(value: str) -> list[str]:
    """`a|b|c` of a label regex (the patterns here are plain alternations)."""
    return value.split("|")


# -------------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    value: str
    stage: str


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction]
    stages: list[tuple[str, str]]  # (image, stage name)

    def of(self, keyword: str, stage: str | None = None) -> list[Instruction]:
        return [i for i in self.instructions
                if i.keyword == keyword and (stage is None or i.stage == stage)]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with continuations joined, comments dropped, ARG defaults substituted."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    instructions, stages, stage = [], [], ""
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "ARG" and "=" in value:
            name, _, default = value.partition("=")
            args.setdefault(name, default)
        if keyword == "FROM":
            image, *rest = value.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), image)
            stage = rest[-1] if len(rest) >= 2 and rest[-2].upper() == "AS" else str(len(stages))
            stages.append((image, stage))
        instructions.append(Instruction(keyword, value, stage))
    return Dockerfile(path, instructions, stages)


def shell_commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line (split on &&, ||, ;, |; `if ... then X; fi` → X)."""
    tokens = shlex.split(run.replace(";", " ; "), posix=True)
    commands, current = [], []
    for token in tokens + [";"]:
        if token in {"&&", "||", ";", "|"}:
            while current and current[0] in {"if", "then", "else", "fi", "do", "done"}:
                current = current[1:]
            if current and current[0] != "[":
                commands.append(current)
            current = []
        else:
            current.append(token)
    return commands


def parse_env(value: str) -> dict[str, str]:
    """`ENV A=1 B="x y"` (and the legacy `ENV A 1`)."""
    tokens = shlex.split(value)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def make_targets(makefile: Path) -> set[str]:
    targets = set()
    for line in makefile.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.%/-]+(?:\s+[A-Za-z0-9_.%/-]+)*)\s*:(?!=)", line)
        if match:
            targets |= set(match[1].split())
    return targets


def module_in_repo(module: str) -> Path | None:
    """The file `python -m module` would run from the repository root, or None."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------ dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(ignore_file: Path, path: str) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the build context."""
    rules = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip().lstrip("/")).replace(os.sep, "/")
        rules.append((negate, _pattern_regex(pattern)))
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


# ---------------------------------------------------------------------------------- compose

_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*))?\}")


def interpolate(value: object, env: dict[str, str] | None = None) -> object:
    """Compose `${VAR}` / `${VAR:-default}` substitution (environment empty by default)."""
    env = env or {}
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: env.get(m[1]) or (m[3] or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def duration_s(value: str | int | float) -> float:
    """A compose duration (`35s`, `1m30s`, `500ms`) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"([0-9.]+)(ms|us|h|m|s)", value)
    if not parts or "".join(a + b for a, b in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(a) * units[b] for a, b in parts)


def container_port(spec: str | int | dict) -> int:
    """The container side of a compose `ports` entry."""
    if isinstance(spec, dict):
        return int(spec["target"])
    text = str(spec).split("/")[0]
    return int(text.rsplit(":", 1)[-1])


URL_PATHS = re.compile(r"['\"](/[A-Za-z0-9_./-]+)['\"]")  # '/readyz' in a health command
