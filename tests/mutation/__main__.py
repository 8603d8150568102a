"""`python -m tests.mutation` (`make mutation`): plant each deliberate bug of `MUTATIONS` in a scratch copy of
the checkout, one at a time, and run the fast tiers there. Exits 1 if any mutant survives (or the unmutated
copy fails), 0 when every one is caught. `--only WORD` runs the mutations whose name contains WORD.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import REPO_ROOT, sealed_child
from tests.mutation import LATER, MUTATIONS, Mutation

FAST_TIERS = ("-m", "not e2e")


def scratch_copy(into: Path) -> Path:
    """The checkout's files as they are now (tracked and new, not ignored), without .venv or caches."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    root = into / "guard"
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def run_fast_tiers(root: Path, first: tuple[str, ...] = ()) -> tuple[int, str]:
    """pytest's exit code and output for the fast tiers in `root`; the `first` test files alone before the rest,
    so a mutant they catch costs seconds."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:randomly", "-p", "no:cacheprovider"]
    place = sealed_child(root, PYTHONPATH=str(root))  # the scratch copy's packages, not the editable install's
    for targets in ([*first], ["tests"]) if first else (["tests"],):
        done = subprocess.run([*command, *FAST_TIERS, *targets], capture_output=True, text=True, check=False, **place)
        if done.returncode != 0:
            break
    return done.returncode, done.stdout + done.stderr


def imports_from(root: Path) -> bool:
    probe = [sys.executable, "-c", "import libs.common.positions as m; print(m.__file__)"]
    done = subprocess.run(probe, capture_output=True, text=True, check=True, **sealed_child(root, PYTHONPATH=str(root)))
    return done.stdout.strip().startswith(str(root))


def plant(root: Path, mutation: Mutation) -> str:
    """Apply `mutation` in `root`; returns the original text of the file (to restore it)."""
    path = root / mutation.path
    original = path.read_text(encoding="utf-8")
    count = original.count(mutation.find)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name!r}: its text occurs {count} times in {mutation.path}; update it")
    path.write_text(original.replace(mutation.find, mutation.replace), encoding="utf-8")
    return original


def first_failure(output: str) -> str:
    return next((line.removeprefix("FAILED ") for line in output.splitlines() if line.startswith("FAILED ")), "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="run only the mutations whose name contains this")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated copy")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only in m.name]
    with tempfile.TemporaryDirectory(prefix="guard-mutation-") as scratch:
        root = scratch_copy(Path(scratch))
        if not imports_from(root):
            print("the scratch copy imports the checkout's code, not its own: check PYTHONPATH", flush=True)
            return 1
        if not args.no_baseline:
            started = time.monotonic()
            code, output = run_fast_tiers(root)
            print(f"baseline (no mutation): pytest exit {code} in {time.monotonic() - started:.0f} s", flush=True)
            if code != 0:
                print(output[-4000:], flush=True)
                return 1
        survived = errors = 0
        print(f"{'result':<9} {'s':>4}  mutation -> first failing test", flush=True)
        for mutation in chosen:
            original = plant(root, mutation)
            started = time.monotonic()
            try:
                code, output = run_fast_tiers(root, mutation.hints)
            finally:
                (root / mutation.path).write_text(original, encoding="utf-8")
            result = {0: "SURVIVED", 1: "caught"}.get(code, f"error {code}")
            survived += code == 0
            errors += code not in (0, 1)
            print(
                f"{result:<9} {time.monotonic() - started:4.0f}  {mutation.name} -> {first_failure(output) or '-'}",
                flush=True,
            )
            if code not in (0, 1):
                print(output[-2000:], flush=True)
    print(
        f"{len(chosen)} mutations: {len(chosen) - survived - errors} caught, {survived} survived, {errors} errors",
        flush=True,
    )
    for bug in LATER:
        print(f"not planted yet (its code does not exist): {bug}", flush=True)
    return 1 if survived or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
