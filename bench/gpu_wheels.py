"""The wheels `bench/gpu_suite.py` needs on a GPU machine that has only torch and transformers.

    python -m bench.gpu_wheels [--out .gpu-wheels]      # here, with the project's .venv and PyPI
    bash bench/gpu_check.sh                              # there, from the repository root, offline

What to carry is computed, not listed by hand: every distribution this project needs
(pyproject.toml's dependencies with the ``server`` and ``trainer`` extras, followed through each
package's own requirements as installed in this environment, i.e. the versions CI tests) except
those the GPU machine already has (``MACHINE_HAS``: torch and its CUDA stack, torchvision, numpy,
scipy, Pillow, matplotlib, tensorboard; see shared/ENVIRONMENT.md "The GPU machine"). transformers
is carried too, so the GPU run uses the version CI tests. Each is downloaded with ``pip download
--no-deps`` as a wheel for CPython 3.12 on x86-64 Linux (55 wheels, about 45 MiB).
``bench/gpu_check.sh`` installs them with ``pip install --no-index --no-deps --target .gpu-site``
(first on ``PYTHONPATH``, so the machine's own environment is not changed) and runs the suite.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
# Already on the GPU machine (large, or tied to its CUDA build): not carried.
MACHINE_HAS = re.compile(
    r"^(torch|torchvision|triton|nvidia-.*|cuda-.*|numpy|scipy|pillow|matplotlib|contourpy|cycler|fonttools|"
    r"kiwisolver|pyparsing|python-dateutil|six|tensorboard|tensorboard-data-server|grpcio|protobuf|werkzeug|"
    r"markdown|absl-py|sympy|mpmath|networkx|jinja2|markupsafe|setuptools)$"
)
ROOT = "psr"
EXTRAS = ("server", "trainer")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(req: Requirement, extras: tuple[str, ...]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET, "extra": extra}) for extra in ("", *extras))


def project_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The project's own requirements with the ``EXTRAS``, read from pyproject.toml (not from the
    installed metadata, which is as old as the last ``pip install -e``)."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += [line for line in project["optional-dependencies"][extra] if canonical(Requirement(line).name) != ROOT]
    return lines


def needed(pyproject: Path = PYPROJECT) -> dict[str, str | None]:
    """Distribution name -> version installed here (``None``: not installed here, e.g. needed only
    on Python 3.12), for everything the project needs on the GPU machine that it lacks."""
    out: dict[str, str | None] = {}
    todo = [Requirement(line) for line in project_requirements(pyproject)]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        req = todo.pop()
        key = (canonical(req.name), tuple(sorted(req.extras)))
        if not _applies(req, ()) or MACHINE_HAS.match(key[0]) or key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            out.setdefault(key[0], None)
            continue
        out[key[0]] = dist.version
        todo += [r for r in map(Requirement, dist.requires or []) if _applies(r, key[1])]
    return dict(sorted(out.items()))


def download(out: Path, wanted: dict[str, str | None]) -> None:
    specs = [f"{name}=={version}" if version else name for name, version in wanted.items()]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none", *platforms,
                    "--dest", str(out), "--quiet", "--quiet", *specs], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".gpu-wheels", help="folder for the wheels (git-ignored by default)")
    parser.add_argument("--list", action="store_true", help="print what would be carried and stop")
    args = parser.parse_args(argv)
    wanted = needed()
    if args.list:
        print("\n".join(f"{n}=={v}" if v else n for n, v in wanted.items()))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    download(out, wanted)
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels ({size:.0f} MiB) in {out} for {len(wanted)} distributions; on the GPU machine, "
          f"from the repository root: bash bench/gpu_check.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
