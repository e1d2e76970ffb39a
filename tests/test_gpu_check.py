"""bench/gpu_check.sh, proven on the CPU: its --dry-run runs every step, and every file it writes is
there and its tables parse and hold what they should; the wheel packer's slimming and reuse; the one
GPU shared by the learner and a central inference server.

The dry run packs its wheels with pip (bench/gpu_wheels.py) into a cache outside the repository
(~/.cache/rfwp-rl/wheels-cpXY) the first time, so that first run needs the package registry; a
failed download is step 1 failing, and the assertion names that step and shows its output.
"""
import csv
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "kernel tests", "kernels", "learner", "train"]
FILES = ["summary.md", "env.md", "kernel_tests.md", "kernels.md", "learner.md", "train.md", "gpu_util.csv"]


def tables(text):
    """The markdown tables of `text` outside ``` blocks, as (header cells, rows of cells); fails on a
    block of '|' lines that is not a well-formed table."""
    blocks, block, fence = [], [], False
    for line in text.splitlines() + [""]:
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence and line.startswith("|"):
            block.append(line)
            continue
        if block:
            blocks.append(block)
            block = []
    out = []
    for b in blocks:
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in b]
        assert len(b) >= 2 and all(re.fullmatch(r":?-{3,}:?", c) for c in cells[1]), f"not a table: {b[:3]}"
        bad = [line for line, row in zip(b, cells) if len(row) != len(cells[0])]
        assert not bad, f"rows whose cells do not match the header {cells[0]}: {bad[:3]}"
        out.append((cells[0], cells[2:]))
    return out


def table(found, column):
    """The rows, as dicts, of the tables whose header has `column`."""
    rows = [dict(zip(head, r)) for head, rs in found if column in head for r in rs]
    assert rows, f"no table with a {column!r} column"
    return rows


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = {**os.environ, "OUT": str(out)}
    env.pop("TRITON_INTERPRET", None)     # the script sets what each step needs, as on the GPU machine
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=880)
    return out, done


def test_dry_run_runs_every_step(dry_run):
    out, done = dry_run
    summary = (out / "summary.md").read_text()
    steps = table(tables(summary), "status")
    assert [s["what"] for s in steps] == STEPS, summary[:2000]
    failed = [s for s in steps if s["status"] != "ok"]
    report = "".join(f"\n\nstep {s['step']} ({s['what']}): {s['status']} after {s['seconds']} s; the end of "
                     f"{s['file']}:\n" + "\n".join((out / s["file"]).read_text().splitlines()[-25:]) for s in failed)
    assert not failed, f"the dry run's steps that did not end ok:{report}"
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_dry_run_writes_every_file_and_its_tables_parse(dry_run):
    out, _ = dry_run
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)     # the device returns at most 8
    for name in FILES:
        if name.endswith(".md"):
            assert tables((out / name).read_text()), f"{name}: no table"
    with open(out / "gpu_util.csv") as f:                          # no nvidia-smi here: its header only
        assert next(csv.reader(f)) == ["run", "timestamp", "utilization_gpu_pct", "memory_used_mib"]


def test_environment_step_packs_installs_and_imports_the_wheels(dry_run):
    out, _ = dry_run
    found = tables((out / "env.md").read_text())
    facts = {r["fact"]: r["value"] for r in table(found, "fact")}
    assert facts["python"] == ".".join(map(str, sys.version_info[:3])) and facts["GPU"].startswith("none")
    wheels = {r["package"]: r for r in table(found, "wheel")}
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert {"ray", "gymnasium", "ale-py", "popgym", "fla-core"} <= set(wheels) and tag in wheels["ray"]["wheel"]
    imports = {r["module"]: r for r in table(found, "imports")}
    for mod, r in imports.items():
        if r["needed"] == "yes":
            assert r["imports"].startswith("yes"), f"{mod}: {r['imports']}"
    assert imports["ray"]["from"].endswith("/site/ray")                  # the packed ray, not this machine's
    assert imports["ray.tune"]["imports"].startswith("no: ModuleNotFoundError")   # slimmed out


def test_kernel_test_step_compares_every_op_in_both_dtypes_and_truncations(dry_run):
    out, _ = dry_run
    rows = table(tables((out / "kernel_tests.md").read_text()), "gradient error")
    cases = {(r["op"], r["inputs"], r["truncation"]) for r in rows}
    assert cases == {(op, dt, tr) for op in ("sum_rule", "delta_rule", "rdn", "delta_rnn")
                     for dt in ("float32", "bfloat16") for tr in ("on", "off")}
    for r in rows:
        assert r["finite"] == "True" and max(float(r["output error"]), float(r["gradient error"])) <= float(r["tolerance"])


def test_kernels_step_times_every_rule_the_lstm_the_cores_and_the_sweep(dry_run):
    out, _ = dry_run
    text = (out / "kernels.md").read_text()
    found = tables(text)
    timed = [(h, rs) for h, rs in found if h[:2] == ["shape", "what"]]
    assert len(timed) == 2                                         # float32, then bfloat16
    for _, rs in timed:
        whats = [r[1] for r in rs]
        for rule in ("sum_rule", "delta_rule", "rdn", "delta_rnn"):
            assert f"{rule} (triton)" in whats and f"{rule} (reference)" in whats
        assert any(w.startswith("nn.LSTM") for w in whats)
    assert any(r[1].startswith("rdn core") for r in timed[0][1]) and any(r[1].startswith("lstm core") for r in timed[0][1])
    # fla: timed, or a row or line saying why not; never a crash
    assert "fla fused_recurrent" in text or "fla not importable" in text
    sweep = table(found, "launch")
    assert {r["rule"] for r in sweep} == {"delta_rule", "rdn"} and sum("(now)" in r["launch"] for r in sweep) == 2
    assert all(float(r["max abs y - y now"]) <= 1e-6 for r in sweep)


def test_learner_step_runs_both_precisions_and_the_data_path(dry_run):
    out, _ = dry_run
    found = tables((out / "learner.md").read_text())
    compute = table(found, "ms/update")
    assert [r["precision"] for r in compute] == ["fp32", "fp32 (bf16 is CUDA only)"]
    path = table(found, "full path (updates/s)")
    assert float(path[0]["full path (updates/s)"]) > 0 and path[0]["learner's GPUs (Ray)"] == "0"
    assert "not run, the same as fp32 here" in path[1]["precision"]


def test_train_step_trains_with_actor_and_central_inference(dry_run):
    out, _ = dry_run
    rows = table(tables((out / "train.md").read_text()), "policy lag")
    assert [r["run"] for r in rows] == ["actor", "central"]
    for r in rows:
        assert r["exit"].startswith("rc 0 after SIGINT") and int(r["reports"]) >= 1 and int(r["frames"].replace(",", "")) > 0
        assert r["GPU util % mean / max"] == "no nvidia-smi"


def test_summary_holds_every_steps_tables(dry_run):
    out, _ = dry_run
    summary = tables((out / "summary.md").read_text())
    for name in FILES[1:-1]:
        for head, _ in tables((out / name).read_text()):
            assert head in [h for h, _ in summary], f"{name}'s table {head} is not in summary.md"


def test_an_unknown_argument_is_a_one_line_error():
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--gpu"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("gpu_check.sh: unknown argument '--gpu'; usage: bash bench/gpu_check.sh "
                                   "[--dry-run] [--help]")


def test_the_header_names_each_cuda_only_path_and_its_step():
    header = (ROOT / "bench/gpu_check.sh").read_text().split("\nset -uo")[0]
    section = header.split("What only the GPU run reaches")[1].split("\n#\n")[0]
    for path in ("compiled Triton kernels", "pinned host buffers", "side copy stream", "bf16 autocast in the learner",
                 "inference server on a GPU"):
        assert path in section, path
    entries = re.split(r"\n#   (?=\S)", section)[1:]                 # one per path, continued lines indented
    assert len(entries) >= 5 and all(re.search(r"steps? \d", e) for e in entries), entries


def _wheels_module():
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "bench/gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slimmed_ray_keeps_what_runs_its_mode_bits_and_a_matching_record(tmp_path):
    gw = _wheels_module()
    src, dst = tmp_path / "ray-9.9.9-cp312-cp312-manylinux2014_x86_64.whl", tmp_path / "slim.whl"
    files = {"ray/__init__.py": b"x = 1\n", "ray/tune/__init__.py": b"", "ray/jars/a.jar": b"jar",
             "ray/train/t.py": b"", "ray/dashboard/client/app.js.map": b"{}", "ray/dashboard/client/app.js": b"js",
             "ray/core/src/ray/raylet/raylet": b"\x7fELF", "ray/tuner.py": b"kept: not the tune folder\n"}
    record = "".join(f"{n},sha256=x,1\n" for n in files) + "ray-9.9.9.dist-info/RECORD,,\n"
    with zipfile.ZipFile(src, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith("raylet") else 0o644) << 16
            z.writestr(info, data)
        z.writestr("ray-9.9.9.dist-info/RECORD", record)
    gw.slim_ray(src, dst)
    with zipfile.ZipFile(dst) as z:
        kept = sorted(z.namelist())
        assert kept == sorted(["ray/__init__.py", "ray/dashboard/client/app.js", "ray/core/src/ray/raylet/raylet",
                               "ray/tuner.py", "ray-9.9.9.dist-info/RECORD"])
        assert z.getinfo("ray/core/src/ray/raylet/raylet").external_attr >> 16 == 0o755
        assert z.read("ray/tuner.py") == files["ray/tuner.py"]
        listed = [line.split(",")[0] for line in z.read("ray-9.9.9.dist-info/RECORD").decode().splitlines()]
        assert sorted(listed) == kept
    assert gw.is_slim(dst) and not gw.is_slim(src)


def test_wheel_set_is_what_the_gpu_image_lacks():
    gw = _wheels_module()
    need = gw.needed("3.12")
    assert {"ray", "gymnasium", "ale-py", "popgym", "fla-core", "einops", "jsonschema", "farama-notifications"} <= set(need)
    assert not {"torch", "numpy", "triton", "tensorboard", "rliable", "imageio-ffmpeg"} & set(need)


def test_a_rerun_with_every_wheel_there_calls_no_pip_and_drops_other_versions(tmp_path, monkeypatch, capsys):
    gw = _wheels_module()
    need = gw.needed("3.11")
    for name in need:
        path = tmp_path / f"{gw.wheel_prefix(name, gw.version(name))}py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"{name}/__init__.py", "")
    stale = tmp_path / "ray-1.0.0-cp311-cp311-manylinux2014_x86_64.whl"
    stale.write_bytes(b"")

    def no_network(*a, **k):
        raise AssertionError("pip was called although every wheel was there")
    monkeypatch.setattr(gw, "download", no_network)
    gw.pack(tmp_path, "3.11")
    assert not stale.exists() and len(list(tmp_path.glob("*.whl"))) == len(need)
    assert "removed ray-1.0.0" in capsys.readouterr().out


def test_a_failed_download_is_one_line_naming_the_packages(tmp_path, monkeypatch):
    gw = _wheels_module()
    monkeypatch.setattr(gw, "PLATFORMS", ["no_such_platform"])
    monkeypatch.setattr(gw, "needed", lambda python: {"einops": "test"})
    monkeypatch.setattr(gw, "version", lambda name: "0.0.0.0.1")       # no such release: pip refuses at once
    with pytest.raises(SystemExit) as e:
        gw.pack(tmp_path, "3.11")
    assert str(e.value).startswith("gpu_wheels.py: pip download failed for einops==0.0.0.0.1")
    assert "\n" not in str(e.value)


def test_one_gpu_is_shared_by_the_learner_and_a_central_inference_server(monkeypatch):
    import ray

    from configs import load_config
    from runtime import cluster
    gpus = {"GPU": 1.0}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, **gpus})

    def learner_gpus(*overrides):
        return cluster.learner_resources(load_config("atari_throughput", list(overrides)))["num_gpus"]
    assert learner_gpus() == 1
    assert learner_gpus("run.inference=central", "run.inference_gpus=0.5") == 0.5
    assert learner_gpus("run.inference=central") == 1                     # the server on CPUs
    assert learner_gpus("run.inference_gpus=0.5") == 1                    # no server: nothing to share
    with pytest.raises(cluster.ClusterError, match=r"run.inference_gpus=1 need 2 GPUs, the Ray cluster has 1: "
                                                   r"give the inference server a fraction"):
        learner_gpus("run.inference=central", "run.inference_gpus=1")
    gpus["GPU"] = 2.0
    assert learner_gpus("run.inference=central", "run.inference_gpus=1") == 1   # one each
    gpus.pop("GPU")
    assert learner_gpus("run.inference=central", "run.inference_gpus=0.5") == 0  # no GPU: the CPU


def test_launch_spec_errors_are_one_line():
    done = subprocess.run([sys.executable, "bench/throughput.py", "--parts", "launch", "--launch", "actor:soon:"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("throughput.py: error: --launch takes NAME:SECONDS:ARGS (e.g. "
                                                    "'actor:90:--num-actors 4'), got 'actor:soon:'")
