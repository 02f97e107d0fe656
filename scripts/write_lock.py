#!/usr/bin/env python3
"""Writes a hash-checked requirements lock from pip's installation report.

  write_lock.py REPORT.json REQUIREMENTS.in LOCK

REPORT.json is `pip install --dry-run --ignore-installed --report` over REQUIREMENTS.in: every package
pip would install, direct and transitive, at the version it chose. Each gets a line `name==version` with
the sha256 of every file PyPI holds for that release (so the lock installs on any platform that release
has wheels for), taken from PyPI's JSON API. Standard library only."""
import json
import pathlib
import sys
import urllib.request

PYPI_PROJECT = "https://pypi.org/pypi/{name}/json"


def release_hashes(name: str, version: str) -> list[str]:
    with urllib.request.urlopen(PYPI_PROJECT.format(name=name), timeout=120) as reply:
        files = json.load(reply)["releases"].get(version, [])
    hashes = sorted({f["digests"]["sha256"] for f in files})
    if not hashes:
        raise SystemExit(f"write_lock: PyPI lists no files for {name}=={version}")
    return hashes


def main() -> int:
    report_path, requirements_in, lock_path = map(pathlib.Path, sys.argv[1:4])
    report = json.loads(report_path.read_text())
    pins = sorted(((item["metadata"]["name"].lower(), item["metadata"]["version"]) for item in report["install"]))
    lines = [
        f"# Every package of the oracle venv, direct and transitive, at an exact version with its PyPI hashes.",
        f"# Generated from {requirements_in.name} by scripts/lock-test-requirements; do not edit by hand.",
        f"# Resolved with {report['environment']['implementation_name']} "
        f"{report['environment']['python_full_version']} on {report['environment']['sys_platform']} "
        f"{report['environment']['platform_machine']}.",
    ]
    for name, version in pins:
        hashes = release_hashes(name, version)
        lines.append(f"{name}=={version} \\")
        lines.extend(f"    --hash=sha256:{h}" + (" \\" if i + 1 < len(hashes) else "") for i, h in enumerate(hashes))
        print(f"write_lock: {name}=={version} ({len(hashes)} files)", flush=True)
    lock_path.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
