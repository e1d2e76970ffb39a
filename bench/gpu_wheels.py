"""Pack the wheels that a lent GPU machine (no network) lacks to run this project; check what imports.

    python bench/gpu_wheels.py                           # for the GPU image: CPython 3.12, x86_64 -> .whl/
    python bench/gpu_wheels.py --python 3.11 --out DIR   # the same set for another Python (the dry run)
    PYTHONPATH=SITE:. python bench/gpu_wheels.py --imports   # which modules import, from where

What goes in: the project's dependencies (pyproject.toml) that the GPU image ('cuda': Python 3.12,
torch, Triton, TensorBoard, numpy, ...; IMAGE below, as the device tool's KINDS.md listed it)
lacks, with their own requirements, minus SKIP (needed by commands the GPU check does not run), plus
fla-core (flash-linear-attention's kernels: bench/kernels.py's anchor) and einops (its one
requirement; the image has it, packed so that fla imports on any machine). Versions are the ones
installed on this machine, which the suite is tested with, else PINS. Extras are not followed (ray
needs neither [default] nor [tune] to train).

ray is slimmed: without its Java jars, RLlib, Serve, Data, LLM, Tune, Train and source maps (about
43 MB instead of 80), so that .whl/ and the working tree stay inside the 64 MiB a device call
carries. `launch.py train` and bench/ need none of them; `launch.py tune` does, and does not run
there. Files already in --out are kept (a rerun with everything there calls no pip, so it works
offline); other wheels there are removed (two versions of one package stop `pip install`).

On the GPU machine (bench/gpu_check.sh, step 1, does this):

    python3 -m pip install -q --no-index --no-deps --no-compile --target SITE .whl/*.whl
    export PYTHONPATH=SITE:$PWD         # SITE: a fresh folder

Prints markdown tables; exits 1 with a one-line reason when pip cannot download (no network?).
"""
import argparse
import importlib
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The GPU image's packages (the device tool's KINDS.md, "Python packages already there", read 2026-11-17).
IMAGE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
SKIP = {"rliable": "launch.py compare only", "imageio-ffmpeg": "eval --video only (a 30 MB ffmpeg)"}
EXTRA = {"fla-core": "bench/kernels.py: fla's fused_recurrent_delta_rule", "einops": "fla-core",
         "typing-extensions": "pydantic-core wants a recent one; the image's version is not known here"}
PINS = {"fla-core": "0.6.0", "einops": "0.8.2", "ray": "2.60.0"}   # where this machine has none
SLIM = re.compile(r"^ray/(jars|rllib|serve|data|llm|tune|train)/|\.js\.map$")
PLATFORMS = ["manylinux_2_39_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
# What the GPU check imports: third-party modules, then the project's own (run from the repo root).
# Optional ones may fail: the slimmed ray has no Tune (`launch.py tune` only), fla is only the kernel
# bench's anchor (its rows then say why they are missing).
IMPORTS = ["ray", "gymnasium", "ale_py", "popgym", "tensorboard", "triton", "configs", "fwp_core", "learner",
           "actors.rollout", "runtime.service", "launch"]
OPTIONAL = ["ray.tune", "fla", "einops"]


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_prefix(name, version):
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def project_requirements():
    """The names in pyproject.toml's [project] dependencies."""
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in deps]


def imported_distributions():
    """{distribution: a file that imports it} for the third-party modules the project's code imports
    (its packages, launch.py and bench/; not tests/), as installed here: catches a requirement that
    pyproject.toml does not declare."""
    import ast
    import tomllib
    dists = metadata.packages_distributions()
    project = norm(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"])
    files = [ROOT / "launch.py"] + [f for d in ("fwp_core", "agents", "actors", "learner", "configs", "runtime",
                                                "experiments", "bench") for f in sorted((ROOT / d).rglob("*.py"))]
    out = {}
    for f in files:
        try:
            tree = ast.parse(f.read_text())
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                for dist in dists.get(name.split(".")[0], []):
                    if norm(dist) != project:
                        out.setdefault(norm(dist), str(f.relative_to(ROOT)))
    return out


def needed(python):
    """{name: why} of everything to pack for a target Python `python` ("3.12")."""
    from packaging.requirements import Requirement
    env = {"python_version": python, "python_full_version": python + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "extra": ""}
    todo = [(norm(n), "pyproject.toml") for n in project_requirements()]
    todo += [(n, f"imported by {f}") for n, f in imported_distributions().items()]
    todo += list(EXTRA.items())
    out = {}
    while todo:
        name, why = todo.pop(0)
        if name in out or (name in IMAGE and name not in EXTRA) or name in SKIP:
            continue
        out[name] = why
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            reqs = ["einops"] if name == "fla-core" else []    # not installed here: its one requirement
        for r in map(Requirement, reqs):
            if r.marker is None or r.marker.evaluate(env):
                todo.append((norm(r.name), name))
    return out


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return PINS.get(name)


def slim_ray(src, dst):
    """Copy the ray wheel `src` to `dst` without the SLIM paths, its RECORD rewritten to match; the
    entries keep their mode bits (raylet, gcs_server)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if SLIM.search(info.filename):
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not SLIM.search(line.split(",")[0])).encode()
            zout.writestr(info, data, compresslevel=6)


def is_slim(path):
    with zipfile.ZipFile(path) as z:
        return not any(SLIM.search(n) for n in z.namelist())


def download(specs, dest, python):
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    done = subprocess.run(cmd + specs, capture_output=True, text=True)
    if done.returncode:
        err = [line for line in done.stderr.splitlines() if line.strip() and "WARNING" not in line]
        sys.exit(f"gpu_wheels.py: pip download failed for {' '.join(specs)} (no network to the package "
                 f"registry?): {' / '.join(err[-3:])[:400]}")


def pack(out, python):
    out.mkdir(parents=True, exist_ok=True)
    want = {name: (version(name), why) for name, why in needed(python).items()}
    have = {p.name: p for p in out.glob("*.whl")}
    found, missing = {}, []
    for name, (ver, _) in want.items():
        match = [f for f in have if ver and f.lower().startswith(wheel_prefix(name, ver))]
        if match:
            found[name] = out / match[0]
        else:
            missing.append(name)
    for f, path in have.items():                        # one version of each package in --out
        if path not in found.values():
            print(f"- removed {f} (not in this set)")
            path.unlink()
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            download([f"{n}=={want[n][0]}" if want[n][0] else n for n in missing], Path(tmp), python)
            for path in Path(tmp).glob("*.whl"):
                shutil.move(str(path), out / path.name)
            print(f"- downloaded {len(missing)} wheels in {time.monotonic() - t0:.1f} s: {' '.join(missing)}")
        for name in missing:
            found[name] = next(p for p in out.glob("*.whl") if p.name.lower().startswith(
                wheel_prefix(name, want[name][0]) if want[name][0] else re.sub(r"[-_.]+", "_", name) + "-"))
    ray = found.get("ray")
    if ray and not is_slim(ray):
        t0 = time.monotonic()
        full = ray.with_suffix(".full")
        ray.rename(full)
        slim_ray(full, ray)
        print(f"- slimmed {ray.name}: {full.stat().st_size / 2**20:.1f} -> {ray.stat().st_size / 2**20:.1f} MiB "
              f"in {time.monotonic() - t0:.1f} s")
        full.unlink()
    print(f"\n# wheels for CPython {python} in {out}\n")
    print("| package | version | wheel | MiB | needed by |\n|---|---|---|---:|---|")
    total = 0
    for name, path in sorted(found.items()):
        size = path.stat().st_size / 2**20
        total += size
        print(f"| {name} | {want[name][0] or '-'} | {path.name} | {size:.1f} | {want[name][1]} |")
    print(f"\n- {len(found)} wheels, {total:.1f} MiB; left out: " + "; ".join(f"{k} ({v})" for k, v in SKIP.items())
          + "; ray's " + SLIM.pattern.split("(")[1].split(")")[0].replace("|", ", "))


def imports():
    """One row per module of IMPORTS and OPTIONAL: whether it imports, its version and the folder it
    came from. Returns 1 if a module of IMPORTS does not import."""
    sys.path.insert(0, str(ROOT))
    print("| module | needed | imports | version | from |\n|---|---|---|---|---|")
    failed = []
    for mod in IMPORTS + OPTIONAL:
        t0 = time.monotonic()
        need = "yes" if mod in IMPORTS else "optional"
        try:
            m = importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001  the table says what failed and why
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120].replace("|", "/")
            print(f"| {mod} | {need} | no: {msg} | - | - |", flush=True)
            failed += [mod] if mod in IMPORTS else []
            continue
        ver = getattr(m, "__version__", "") or "-"
        where = str(Path(getattr(m, "__file__", None) or "?").parent)
        where = where.replace(str(ROOT), "<repo>")
        print(f"| {mod} | {need} | yes ({time.monotonic() - t0:.1f} s) | {ver} | {where} |", flush=True)
    if failed:
        print(f"\n- needed but not importable: {', '.join(failed)}")
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default="3.12", help="target CPython version, e.g. 3.12 (the GPU image's)")
    p.add_argument("--out", default=str(ROOT / ".whl"), help="folder of the wheels (default: .whl/)")
    p.add_argument("--imports", action="store_true",
                   help="only print which modules import (run with PYTHONPATH=<site>:<repo>)")
    args = p.parse_args()
    if args.imports:
        return imports()
    if not re.fullmatch(r"3\.\d+", args.python):
        p.error(f"--python takes a CPython version such as 3.12, got {args.python!r}")
    pack(Path(args.out), args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
