"""Check that a folder of wheels resolves against the GPU image: every Requires-Dist line of
every wheel (markers evaluated for the target Python on Linux, extras skipped) names a
wheel in the folder or a package of the image (bench/mock_gpu_image.py), and each name has
one wheel only.

    python bench/check_wheels.py .whl [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mock_gpu_image import IMAGE_PACKAGES  # noqa: E402

# Runtime dependencies the benchmark can do without: espeak-ng's library (the espeak engine
# only) and, where its marker applies (Python < 3.12, the CPU rehearsal), WeTextProcessing's
# graphs, whose absence makes the normaliser use the wetext graphs, as on 3.12.
NOT_CARRIED = {"espeakng-loader", "wetextprocessing"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args()
    env = {
        "python_version": args.python_version,
        "python_full_version": args.python_version + ".0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "extra": "",
    }
    wheels = sorted(args.folder.glob("*.whl"))
    metas = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metas[wheel.name] = Parser().parsestr(archive.read(name).decode())
    have: dict[str, list[str]] = {}
    for wheel, meta in metas.items():
        have.setdefault(canonical(meta["Name"]), []).append(wheel)
    image = {canonical(n) for n in IMAGE_PACKAGES}
    problems = [f"two wheels of {n}: {w}" for n, w in have.items() if len(w) > 1]
    problems += [f"{n} is in the image already (carry it only for another version)" for n in have if n in image]
    for meta in metas.values():
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
                continue
            name = canonical(req.name)
            where = "wheel" if name in have else "image" if name in image else None
            print(f"  {meta['Name']} -> {line}: {where or 'MISSING'}")
            if where is None:
                problems.append(f"{meta['Name']} needs {line}: neither a wheel here nor in the image")
    # The project's own runtime dependencies (`pip install --no-deps` of the project skips them).
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
            print(f"  glmtts-batch -> {line}: not for Python {args.python_version}")
            continue
        name = canonical(req.name)
        where = "wheel" if name in have else "image" if name in image else "skipped" if name in NOT_CARRIED else None
        print(f"  glmtts-batch -> {line}: {where or 'MISSING'}")
        if where is None:
            problems.append(f"the project needs {line}: neither a wheel here nor in the image")
    size = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB")
    if problems:
        print("\n".join(f"PROBLEM: {p}" for p in problems))
        raise SystemExit(1)
    print("every requirement resolves (wheels + image)")


if __name__ == "__main__":
    main()
