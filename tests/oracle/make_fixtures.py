#!/usr/bin/env python3
"""Makes every oracle fixture the C++ tests read: tiny checkpoints with reference logits from HF
transformers, tokenizer cases from the `tokenizers` package, NVFP4 cases from compressed-tensors.
Each part writes under --out/<part>/ and is skipped when its inputs (its sources and the package lock)
have not changed. Every part is seeded; --out/<part>/fixture_info.json records what made it: the
sources' digest and the version of every package in the venv."""
import argparse
import hashlib
import importlib
import importlib.metadata
import json
import pathlib
import platform
import sys

HERE = pathlib.Path(__file__).resolve().parent
LOCK = HERE.parents[1] / "scripts" / "requirements-test.lock"
PARTS = [p.stem for p in sorted(HERE.glob("fixtures_*.py"))]


def source_digest(part: str) -> str:
    # A part's data folder, tests/data/<part>/ (the chat templates), is one of its inputs too.
    data = sorted((HERE.parent / "data" / part.removeprefix("fixtures_")).glob("*"))
    digest = hashlib.sha256()
    for path in [HERE / f"{part}.py", HERE / "make_fixtures.py", *sorted(HERE.glob("common*.py")), LOCK, *data]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_fixture_info(out: pathlib.Path, part: str, digest: str) -> None:
    packages = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    info = {"part": part, "inputs_sha256": digest, "python": platform.python_version(),
            "machine": platform.machine(), "packages": dict(sorted(packages.items()))}
    (out / "fixture_info.json").write_text(json.dumps(info, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--force", action="store_true", help="remake every part")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if not PARTS:
        print("make_fixtures: no fixtures_*.py parts found", file=sys.stderr)
        return 1
    for part in PARTS:
        out = args.out / part.removeprefix("fixtures_")
        stamp = out / ".digest"
        digest = source_digest(part)
        if not args.force and stamp.exists() and stamp.read_text() == digest:
            print(f"make_fixtures: {part} up to date")
            continue
        out.mkdir(parents=True, exist_ok=True)
        print(f"make_fixtures: making {part} in {out}", flush=True)
        importlib.import_module(part).make(out)
        write_fixture_info(out, part, digest)
        stamp.write_text(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
