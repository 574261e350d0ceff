"""Audit the serving lock for known vulnerabilities: `make audit`.

    python .ci/audit.py requirements/serving.lock --allowlist .ci/audit-allowlist.toml

1. pip-audit (`-r LOCK --no-deps --disable-pip`, PyPI's vulnerability data) audits every pin.
2. A pin pip-audit could not look up (it reports it as skipped, e.g. "not found on PyPI",
   and would otherwise still print "No known vulnerabilities found") is looked up in PyPI's
   project JSON (`/pypi/NAME/json`) instead. That document lists the vulnerabilities of the
   project's latest release only, so it audits the pin only when the pin is that release;
   any other pin stays NOT AUDITED.
3. Policy:
   - a vulnerability with a fix available fails the audit, unless an unexpired
     `[[vulnerability]]` entry of the allow-list names it (its id or an alias) and package;
   - a vulnerability without a fix is reported and does not fail;
   - a pin that could not be audited fails the audit (exit 3), unless an unexpired
     `[[unaudited]]` entry names its package and version, or ML2P_AUDIT_OFFLINE_OK=1 is set
     (then it is still reported, loudly);
   - an expired entry suppresses nothing and is reported; an entry that matches nothing is
     reported as removable.

Exit status: 0 passed, 1 vulnerable (or a bad allow-list), 3 incomplete (not everything
could be audited). The policy (`evaluate`) is pure and tested without the network
(tests/ci/test_audit.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PYPI_JSON = "https://pypi.org/pypi/{name}/json"
OFFLINE_OK_ENV = "ML2P_AUDIT_OFFLINE_OK"
EXIT_OK, EXIT_VULNERABLE, EXIT_INCOMPLETE = 0, 1, 3


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------ input
@dataclass(frozen=True)
class Vuln:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fix_versions: tuple[str, ...] = ()
    summary: str = ""
    source: str = "pip-audit"

    @property
    def ids(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass
class Findings:
    """What the vulnerability data said about the pins of a lock."""

    pins: dict[str, str]                                  # canonical name -> version
    vulns: list[Vuln] = field(default_factory=list)
    audited: dict[str, str] = field(default_factory=dict)  # canonical name -> source
    why_not: dict[str, str] = field(default_factory=dict)  # canonical name -> reason


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements/constraints file (comments ignored)."""
    return read_lock_text(path.read_text(), str(path))


def read_lock_text(text: str, path: str = "lock") -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
        if not match:
            raise ValueError(f"{path}: not an exact pin: {raw!r}")
        pins[canonical(match[1])] = match[2]
    return pins


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:200] if lines else ""


def from_pip_audit(report: dict, findings: Findings) -> None:
    """Fold pip-audit's JSON (`-f json`) into `findings`."""
    for dep in report.get("dependencies", []):
        name = canonical(dep["name"])
        if "skip_reason" in dep:
            findings.why_not[name] = dep["skip_reason"]
            continue
        findings.audited[name] = "pip-audit"
        findings.why_not.pop(name, None)
        for v in dep.get("vulns", []):
            findings.vulns.append(Vuln(
                package=name, version=dep["version"], id=v["id"],
                aliases=tuple(v.get("aliases") or ()),
                fix_versions=tuple(v.get("fix_versions") or ()),
                summary=_first_line(v.get("description"))))


def from_project_json(name: str, version: str, project: dict, findings: Findings) -> None:
    """Fold PyPI's project JSON into `findings`: it audits the pin only if the pin is the
    latest release, whose vulnerabilities that document lists."""
    latest = project["info"]["version"]
    if latest != version:
        prior = findings.why_not.get(name)
        findings.why_not[name] = (f"{prior}; " if prior else "") + (
            f"PyPI's project JSON lists the vulnerabilities of the latest release "
            f"({latest}) only")
        return
    findings.audited[name] = "PyPI project JSON"
    findings.why_not.pop(name, None)
    for v in project.get("vulnerabilities") or []:
        if v.get("withdrawn"):
            continue
        findings.vulns.append(Vuln(
            package=name, version=version, id=v["id"], aliases=tuple(v.get("aliases") or ()),
            fix_versions=tuple(v.get("fixed_in") or ()),
            summary=_first_line(v.get("summary") or v.get("details")),
            source="pypi project json"))


# -------------------------------------------------------------------------------- allow-list
@dataclass(frozen=True)
class Entry:
    kind: str            # "vulnerability" or "unaudited"
    package: str
    key: str             # vulnerability id, or the pinned version
    reason: str
    expires: dt.date

    def describe(self) -> str:
        what = self.key if self.kind == "vulnerability" else f"{self.package}=={self.key}"
        return f"{self.kind} {what} ({self.package}), expires {self.expires}: {self.reason}"


def load_allowlist(text: str) -> list[Entry]:
    """Parse the TOML allow-list; every entry must have its fields and a real date."""
    data = tomllib.loads(text)
    unknown = set(data) - {"vulnerability", "unaudited"}
    if unknown:
        raise ValueError(f"allow-list: unknown tables {sorted(unknown)}")
    entries: list[Entry] = []
    for kind, key_field in (("vulnerability", "id"), ("unaudited", "version")):
        for i, raw in enumerate(data.get(kind, [])):
            where = f"allow-list [[{kind}]] #{i + 1}"
            need = {key_field, "package", "reason", "expires"}
            missing = need - set(raw)
            if missing:
                raise ValueError(f"{where}: missing {sorted(missing)}")
            if set(raw) - need:
                raise ValueError(f"{where}: unknown keys {sorted(set(raw) - need)}")
            expires = raw["expires"]
            if not isinstance(expires, dt.date) or isinstance(expires, dt.datetime):
                raise ValueError(f"{where}: expires must be a TOML date (YYYY-MM-DD)")
            reason = str(raw["reason"]).strip()
            if not reason:
                raise ValueError(f"{where}: empty reason")
            entries.append(Entry(kind, canonical(str(raw["package"])), str(raw[key_field]),
                                 reason, expires))
    return entries


# ------------------------------------------------------------------------------------ policy
@dataclass
class Verdict:
    failing: list[Vuln] = field(default_factory=list)       # fixable, not allow-listed
    no_fix: list[Vuln] = field(default_factory=list)        # reported only
    allowed: list[tuple[Vuln, Entry]] = field(default_factory=list)
    unaudited: dict[str, str] = field(default_factory=dict)           # unacknowledged
    unaudited_allowed: list[tuple[str, str, Entry]] = field(default_factory=list)
    expired: list[Entry] = field(default_factory=list)
    unused: list[Entry] = field(default_factory=list)
    offline_ok: bool = False

    @property
    def exit_code(self) -> int:
        if self.failing:
            return EXIT_VULNERABLE
        if self.unaudited and not self.offline_ok:
            return EXIT_INCOMPLETE
        return EXIT_OK


def evaluate(findings: Findings, entries: Iterable[Entry], today: dt.date,
             offline_ok: bool = False) -> Verdict:
    entries = list(entries)
    verdict = Verdict(offline_ok=offline_ok)
    verdict.expired = [e for e in entries if e.expires < today]
    live = [e for e in entries if e.expires >= today]
    used: set[Entry] = set()
    for vuln in findings.vulns:
        entry = next((e for e in live if e.kind == "vulnerability"
                      and e.package == vuln.package and e.key in vuln.ids), None)
        if entry is not None:
            used.add(entry)
            verdict.allowed.append((vuln, entry))
        elif vuln.fix_versions:
            verdict.failing.append(vuln)
        else:
            verdict.no_fix.append(vuln)
    for name, version in sorted(findings.pins.items()):
        if name in findings.audited:
            continue
        why = findings.why_not.get(name, "no vulnerability data was returned for it")
        entry = next((e for e in live if e.kind == "unaudited"
                      and e.package == name and e.key == version), None)
        if entry is not None:
            used.add(entry)
            verdict.unaudited_allowed.append((name, version, entry))
        else:
            verdict.unaudited[name] = why
    verdict.unused = [e for e in live if e not in used]
    return verdict


def report(verdict: Verdict, findings: Findings) -> str:
    out: list[str] = []
    sources: dict[str, int] = {}
    for name in findings.pins:
        if name in findings.audited:
            sources[findings.audited[name]] = sources.get(findings.audited[name], 0) + 1
    by = ", ".join(f"{src}: {k}" for src, k in sorted(sources.items()))
    out.append(f"audited {sum(sources.values())} of {len(findings.pins)} pinned packages"
               + (f" ({by})" if by else ""))

    def vuln_line(v: Vuln) -> str:
        fix = ", ".join(v.fix_versions) or "none"
        alias = f" ({', '.join(v.aliases)})" if v.aliases else ""
        text = f"  {v.package}=={v.version}: {v.id}{alias}; fixed in: {fix}"
        return text + (f"\n      {v.summary}" if v.summary else "")

    if verdict.failing:
        out.append(f"FAIL: {len(verdict.failing)} vulnerabilit(y/ies) with a fix available:")
        out += [vuln_line(v) for v in verdict.failing]
        out.append("  upgrade the pin (pyproject.toml, then `make lock`), or add an "
                   "allow-list entry with a reason and an expiry date")
    if verdict.no_fix:
        out.append(f"warning: {len(verdict.no_fix)} vulnerabilit(y/ies) with no fix "
                   "available (not failing):")
        out += [vuln_line(v) for v in verdict.no_fix]
    if verdict.allowed:
        out.append(f"allow-listed: {len(verdict.allowed)}")
        out += [f"{vuln_line(v)}\n      allowed until {e.expires}: {e.reason}"
                for v, e in verdict.allowed]
    for e in verdict.expired:
        out.append(f"EXPIRED allow-list entry (suppresses nothing now): {e.describe()}")
    for e in verdict.unused:
        out.append(f"note: allow-list entry matches nothing (remove it?): {e.describe()}")
    if verdict.unaudited_allowed:
        out.append(f"not audited, acknowledged in the allow-list: "
                   f"{len(verdict.unaudited_allowed)}")
        out += [f"  {name}=={ver}: until {e.expires}: {e.reason}"
                for name, ver, e in verdict.unaudited_allowed]
    if verdict.unaudited:
        head = ("NOT AUDITED (allowed by " + OFFLINE_OK_ENV + "=1)" if verdict.offline_ok
                else "INCOMPLETE: NOT AUDITED")
        out.append(f"{head}: {len(verdict.unaudited)} package(s) had no vulnerability data:")
        by_reason: dict[str, list[str]] = {}
        for name, why in sorted(verdict.unaudited.items()):
            by_reason.setdefault(why, []).append(f"{name}=={findings.pins[name]}")
        out += [f"  {', '.join(pins)}: {why}" for why, pins in by_reason.items()]
        if not verdict.offline_ok:
            out.append(f"  the audit cannot pass without data for them; set {OFFLINE_OK_ENV}=1 "
                       "to accept an incomplete audit (e.g. offline)")
    code = verdict.exit_code
    out.append({EXIT_OK: "audit passed", EXIT_VULNERABLE: "audit FAILED: vulnerable",
                EXIT_INCOMPLETE: "audit FAILED: incomplete"}[code]
               + ("" if code or not verdict.unaudited else " (INCOMPLETE)"))
    return "\n".join(out)


# ------------------------------------------------------------------------------------ sources
def run_pip_audit(lock: Path, timeout_s: int = 15) -> tuple[dict | None, str]:
    """pip-audit's JSON report of the lock, or None and why not."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pip-audit.json"
        cmd = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps",
               "--disable-pip", "-s", "pypi", "-f", "json", "-o", str(out),
               "--progress-spinner", "off", "--timeout", str(timeout_s)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"pip-audit did not run: {exc}"
        # pip-audit exits 1 when it finds vulnerabilities; the report decides, not that
        try:
            return json.loads(out.read_text()), ""
        except (OSError, ValueError):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return None, f"pip-audit failed (exit {proc.returncode}): " + " | ".join(tail)


def fetch_project(name: str, timeout_s: float = 20) -> dict:
    req = urllib.request.Request(PYPI_JSON.format(name=name),
                                 headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.load(resp)


def fill_from_project_json(findings: Findings, fetch: Callable[[str], dict]) -> None:
    todo = [n for n in sorted(findings.pins) if n not in findings.audited]

    def one(name: str) -> tuple[str, dict | None, str]:
        err = ""
        for _ in range(2):  # one retry for a transient error
            try:
                return name, fetch(name), ""
            except (urllib.error.URLError, OSError, ValueError) as exc:
                err = f"PyPI project JSON unreachable: {exc}"
        return name, None, err

    with ThreadPoolExecutor(max_workers=8) as pool:
        for name, project, err in pool.map(one, todo):
            if project is None:
                prior = findings.why_not.get(name)
                findings.why_not[name] = f"{prior}; {err}" if prior else err
            else:
                from_project_json(name, findings.pins[name], project, findings)


def collect(lock: Path, fetch: Callable[[str], dict] | None = None) -> Findings:
    findings = Findings(pins=read_lock(lock))
    data, err = run_pip_audit(lock)
    if data is None:
        for name in findings.pins:
            findings.why_not[name] = err
    else:
        from_pip_audit(data, findings)
    fill_from_project_json(findings, fetch or fetch_project)
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path, help="pinned requirements/constraints file")
    parser.add_argument("--allowlist", type=Path, default=Path(".ci/audit-allowlist.toml"))
    parser.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today(),
                        help="date the expiries are compared with (default: today)")
    args = parser.parse_args(argv)
    try:
        entries = load_allowlist(args.allowlist.read_text()) if args.allowlist.exists() else []
        findings = collect(args.lock)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"audit FAILED: {exc}", file=sys.stderr)
        return EXIT_VULNERABLE
    verdict = evaluate(findings, entries, args.today,
                       offline_ok=os.environ.get(OFFLINE_OK_ENV) == "1")
    print(report(verdict, findings))
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
