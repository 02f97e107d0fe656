#!/usr/bin/env python3
"""Makes every oracle fixture the C++ tests read: tiny checkpoints with reference logits from HF
transformers, tokenizer cases from the `tokenizers` package, NVFP4 cases from compressed-tensors.
Each part writes under --out/<part>/ and is skipped when its inputs have not changed."""
import argparse
import hashlib
import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
PARTS = [p.stem for p in sorted(HERE.glob("fixtures_*.py"))]


def source_digest(part: str) -> str:
    digest = hashlib.sha256()
    for path in [HERE / f"{part}.py", HERE / "make_fixtures.py", *sorted(HERE.glob("common*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


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
        stamp.write_text(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
