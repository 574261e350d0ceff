""".ci/audit.py (`make audit`): the policy on a pip-audit report, without the network.

data/pip-audit.json is in pip-audit's `-f json` format: a fixable vulnerability (Pillow
10.0.0, PYSEC-2023-227, fixed in 10.2.0), one with no fix (ecdsa, GHSA-wj6h-64fc-37mp), a
clean pin, and numpy as pip-audit reports a pin it could not look up (the skip_reason text
recorded from a real run here).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import audit
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
TODAY = dt.date(2026, 12, 1)


LOCK = """\
# a lock in the format .ci/lock.py writes
ecdsa==0.19.0
    # via something
h11==0.16.0
numpy==2.4.6
Pillow==10.0.0
"""


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "serving.lock"
    path.write_text(LOCK)
    return path


def _project(version: str, vulns: list[dict] | None = None) -> dict:
    return {"info": {"version": version}, "vulnerabilities": vulns or []}


def _findings(lock: Path, projects: dict[str, dict] | None = None):
    """The recorded pip-audit report, then the project-JSON fallback on fake data."""
    findings = audit.Findings(pins=audit.read_lock(lock))
    audit.from_pip_audit(json.loads((DATA / "pip-audit.json").read_text()), findings)
    projects = {"numpy": _project("2.5.5")} if projects is None else projects

    def fetch(name: str) -> dict:
        if name not in projects:
            raise OSError("unreachable")
        return projects[name]

    audit.fill_from_project_json(findings, fetch)
    return findings


def _allow(*blocks: str) -> list:
    return audit.load_allowlist("\n".join(blocks))


PILLOW = """[[vulnerability]]
id = "{id}"
package = "{package}"
reason = "ImageMath.eval is never called with user input"
expires = {expires}
"""
NUMPY = """[[unaudited]]
package = "numpy"
version = "2.4.6"
reason = "per-version data unreachable; 2.5 needs Python 3.12"
expires = 2027-03-01
"""


def _pillow(id="PYSEC-2023-227", package="pillow", expires="2027-01-31") -> str:
    return PILLOW.format(id=id, package=package, expires=expires)


def test_lock_parsing(lock):
    assert audit.read_lock(lock) == {"ecdsa": "0.19.0", "h11": "0.16.0", "numpy": "2.4.6",
                                     "pillow": "10.0.0"}
    lock.write_text("fastapi>=0.110\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        audit.read_lock(lock)


def test_fixable_vulnerability_fails(lock):
    verdict = audit.evaluate(_findings(lock), _allow(NUMPY), TODAY)
    assert [v.id for v in verdict.failing] == ["PYSEC-2023-227"]
    assert verdict.exit_code == audit.EXIT_VULNERABLE
    text = audit.report(verdict, _findings(lock))
    assert "FAIL: 1" in text and "pillow==10.0.0: PYSEC-2023-227" in text
    assert "fixed in: 10.2.0" in text and text.endswith("audit FAILED: vulnerable")


@pytest.mark.parametrize("vuln_id", ["PYSEC-2023-227", "CVE-2023-50447", "GHSA-3f63-hfp8-52jq"])
def test_allow_listed_vulnerability_passes(lock, vuln_id):
    findings = _findings(lock)
    verdict = audit.evaluate(findings, _allow(_pillow(id=vuln_id), NUMPY), TODAY)
    assert not verdict.failing and verdict.exit_code == audit.EXIT_OK
    ((vuln, entry),) = verdict.allowed
    assert vuln.package == "pillow" and entry.expires == dt.date(2027, 1, 31)
    text = audit.report(verdict, findings)
    assert "allow-listed: 1" in text and "ImageMath.eval is never called" in text
    assert text.endswith("audit passed")


def test_entry_for_another_package_does_not_suppress(lock):
    verdict = audit.evaluate(_findings(lock), _allow(_pillow(package="numpy"), NUMPY), TODAY)
    assert verdict.exit_code == audit.EXIT_VULNERABLE
    assert [e.package for e in verdict.unused] == ["numpy"]


def test_expired_entry_fails_and_is_reported(lock):
    findings = _findings(lock)
    entries = _allow(_pillow(expires="2026-11-30"), NUMPY)
    verdict = audit.evaluate(findings, entries, TODAY)
    assert verdict.exit_code == audit.EXIT_VULNERABLE
    assert [e.key for e in verdict.expired] == ["PYSEC-2023-227"] and not verdict.allowed
    assert "EXPIRED allow-list entry" in audit.report(verdict, findings)
    # the expiry day itself still counts
    assert audit.evaluate(findings, entries, dt.date(2026, 11, 30)).exit_code == audit.EXIT_OK


def test_vulnerability_without_fix_warns_and_passes(lock):
    findings = _findings(lock)
    verdict = audit.evaluate(findings, _allow(_pillow(), NUMPY), TODAY)
    assert [v.id for v in verdict.no_fix] == ["GHSA-wj6h-64fc-37mp"]
    assert verdict.exit_code == audit.EXIT_OK
    text = audit.report(verdict, findings)
    assert "warning: 1 vulnerabilit(y/ies) with no fix" in text
    assert "ecdsa==0.19.0: GHSA-wj6h-64fc-37mp (CVE-2024-23342); fixed in: none" in text


def test_unaudited_pin_fails_unless_acknowledged_or_offline_ok(lock):
    findings = _findings(lock)
    assert set(findings.audited) == {"pillow", "ecdsa", "h11"}
    assert "numpy" in findings.why_not and "2.5.5" in findings.why_not["numpy"]
    assert "not found on PyPI" in findings.why_not["numpy"]  # pip-audit's reason is kept
    verdict = audit.evaluate(findings, _allow(_pillow()), TODAY)
    assert verdict.exit_code == audit.EXIT_INCOMPLETE
    text = audit.report(verdict, findings)
    assert "INCOMPLETE: NOT AUDITED: 1" in text and "numpy==2.4.6" in text
    offline = audit.evaluate(findings, _allow(_pillow()), TODAY, offline_ok=True)
    assert offline.exit_code == audit.EXIT_OK
    assert "NOT AUDITED (allowed by ML2P_AUDIT_OFFLINE_OK=1)" in audit.report(offline, findings)
    # the acknowledgment names a version: another numpy pin is unaudited again
    findings.pins["numpy"] = "2.4.5"
    assert audit.evaluate(findings, _allow(_pillow(), NUMPY),
                          TODAY).exit_code == audit.EXIT_INCOMPLETE


def test_fixable_beats_offline_ok(lock):
    verdict = audit.evaluate(_findings(lock), [], TODAY, offline_ok=True)
    assert verdict.exit_code == audit.EXIT_VULNERABLE


def test_project_json_audits_the_latest_release_only(lock):
    vulns = [{"id": "GHSA-aaaa-bbbb-cccc", "aliases": ["CVE-2026-1"], "fixed_in": [],
              "summary": "still open", "withdrawn": None},
             {"id": "GHSA-dddd-eeee-ffff", "aliases": [], "fixed_in": ["2.4.7"],
              "summary": "fixed", "withdrawn": None},
             {"id": "GHSA-gone-gone-gone", "aliases": [], "fixed_in": ["2.4.7"],
              "summary": "withdrawn", "withdrawn": "2026-10-01T00:00:00Z"}]
    findings = _findings(lock, {"numpy": _project("2.4.6", vulns)})
    assert findings.audited["numpy"] == "PyPI project JSON"
    verdict = audit.evaluate(findings, _allow(_pillow()), TODAY)
    assert [v.id for v in verdict.failing] == ["GHSA-dddd-eeee-ffff"]
    assert [v.id for v in verdict.no_fix] == ["GHSA-wj6h-64fc-37mp", "GHSA-aaaa-bbbb-cccc"]


def test_unreachable_project_json_leaves_the_pin_unaudited(lock):
    findings = _findings(lock, projects={})
    assert "numpy" not in findings.audited and "unreachable" in findings.why_not["numpy"]


@pytest.mark.parametrize("block, message", [
    ('[[vulnerability]]\nid = "X"\npackage = "p"\nexpires = 2027-01-01\n', "missing"),
    ('[[vulnerability]]\nid = "X"\npackage = "p"\nreason = ""\nexpires = 2027-01-01\n',
     "empty reason"),
    ('[[vulnerability]]\nid = "X"\npackage = "p"\nreason = "r"\nexpires = "2027-01-01"\n',
     "TOML date"),
    ('[[unaudited]]\npackage = "p"\nreason = "r"\nexpires = 2027-01-01\n', "version"),
    ('[[ignore]]\nid = "X"\n', "unknown tables"),
])
def test_bad_allowlist_is_an_error(block, message):
    with pytest.raises(ValueError, match=message):
        audit.load_allowlist(block)


def test_main_end_to_end(lock, tmp_path, monkeypatch, capsys):
    """main(): pip-audit's report + the fallback + the allow-list file -> exit status."""
    recorded = json.loads((DATA / "pip-audit.json").read_text())
    monkeypatch.setattr(audit, "run_pip_audit", lambda path: (recorded, ""))
    monkeypatch.setattr(audit, "fetch_project", lambda name: _project("2.5.5"))
    monkeypatch.delenv(audit.OFFLINE_OK_ENV, raising=False)
    allow = tmp_path / "allow.toml"
    allow.write_text(_pillow() + NUMPY)
    argv = [str(lock), "--allowlist", str(allow), "--today", "2026-12-01"]
    assert audit.main(argv) == audit.EXIT_OK
    assert "audited 3 of 4 pinned packages (pip-audit: 3)" in capsys.readouterr().out
    assert audit.main(argv[:-1] + ["2027-02-01"]) == audit.EXIT_VULNERABLE  # pillow expired
    allow.write_text(_pillow())
    assert audit.main(argv) == audit.EXIT_INCOMPLETE
    monkeypatch.setenv(audit.OFFLINE_OK_ENV, "1")
    assert audit.main(argv) == audit.EXIT_OK


def test_pip_audit_failure_marks_everything_unaudited(lock, monkeypatch):
    monkeypatch.setattr(audit, "run_pip_audit", lambda path: (None, "pip-audit failed: boom"))
    findings = audit.collect(lock, fetch=lambda name: (_ for _ in ()).throw(OSError("down")))
    assert not findings.audited
    assert all("boom" in why and "down" in why for why in findings.why_not.values())


def test_committed_allowlist_is_valid_and_unexpired():
    entries = audit.load_allowlist((REPO / ".ci" / "audit-allowlist.toml").read_text())
    assert all(e.reason for e in entries)
    # the audit itself reports expired entries; this only catches a typo'd date far past
    assert all(e.expires > dt.date(2026, 1, 1) for e in entries)
