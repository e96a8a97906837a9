"""launch/: the `ray up` config validates against Ray's own schema, the KubeRay RayJob has the fields KubeRay
requires, the shell scripts parse, and the SLURM script starts the head, then the workers, then the launcher
(run here with stand-ins for srun, scontrol, ray and python). The README's cluster section uses every file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support import ROOT

LAUNCH = ROOT / "launch"


def test_ray_up_config_validates_against_rays_schema():
    import ray.autoscaler
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((LAUNCH / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(config)  # the schema plus Ray's own checks (head type exists, min_workers <= max_workers)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # a CPU head ...
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers)  # ... and a GPU worker group
    setup = " ".join(config["setup_commands"])
    assert "pip install -e ~/raysweep" in setup and config["file_mounts"] == {"~/raysweep": "."}
    assert "--num-gpus=0" in " ".join(config["head_start_ray_commands"])


def test_rayjob_has_what_kuberay_requires():
    job = yaml.safe_load((LAUNCH / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m raysweep.launch ")
    assert "--storage s3://" in spec["entrypoint"]  # pods share no disk: an object store
    cluster = spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert isinstance(group["rayStartParams"], dict)
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    # every container gets the same image: trial code pickled by the driver must unpickle on the workers
    assert len({c["image"] for g in groups for c in g["template"]["spec"]["containers"]}) == 1


@pytest.mark.parametrize("script", ["local_cluster.sh", "slurm.sh"])
def test_shell_scripts_parse_and_are_executable(script):
    path = LAUNCH / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert path.stat().st_mode & stat.S_IXUSR


def _stand_in(folder: Path, name: str, body: str = "") -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n"
                    f'printf "%s\\n" "{name} $*" >> "$CALLS"\n' + body)
    path.chmod(0o755)


def test_slurm_script_starts_head_then_workers_then_the_launcher(tmp_path):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    _stand_in(bin_dir, "scontrol", 'printf "gpu001\\ngpu002\\ngpu003\\n"\n')
    _stand_in(bin_dir, "srun", 'for a in "$@"; do [[ $a == hostname ]] && echo "10.0.0.5 fe80::1"; done; exit 0\n')
    _stand_in(bin_dir, "python", "cat > /dev/null\n")  # the wait-for-nodes snippet comes on stdin
    env = {**os.environ, "CALLS": str(tmp_path / "calls"), "RAYSWEEP_VENV": str(tmp_path / "venv"),
           "RAYSWEEP_STORAGE": "/lustre/me/results", "RAYSWEEP_HEAD_WAIT_S": "1", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[001-003]", "SLURM_CPUS_PER_TASK": "16", "SLURM_GPUS_PER_TASK": "4"}
    proc = subprocess.run(["bash", str(LAUNCH / "slurm.sh"), "search_spaces/quickstart.yaml", "--max-concurrent", "8"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    address = "10.0.0.5:6621"  # 6379 + 4242 % 1000: a port of this job's own
    head = next(i for i, c in enumerate(calls) if "ray start --head" in c)
    assert calls[head].startswith("srun --nodes=1 --ntasks=1 -w gpu001 ray start --head --node-ip-address=10.0.0.5")
    assert "--port=6621 --num-cpus=16 --num-gpus=4" in calls[head]
    # the srun steps run in the background (`ray start --block` never returns): only the head's 1 s head start
    # orders them; the wait for the nodes and the launcher run in the foreground, in this order
    workers = [c for c in calls if "ray start --address" in c]
    assert sorted(c.split(" -w ")[1].split()[0] for c in workers) == ["gpu002", "gpu003"]
    assert all(f"--address={address}" in c and calls.index(c) > head for c in workers)
    wait = calls.index(f"python - {address} 3")  # waits for all 3 nodes ...
    launcher = calls.index(f"python -m raysweep.launch search_spaces/quickstart.yaml --address {address} "
                           "--storage /lustre/me/results --shared-storage --max-concurrent 8")
    assert head < wait < launcher  # ... then the driver, on the head (where the batch script runs)


def test_readme_walks_through_every_cluster_file():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    for needle in ("launch/local_cluster.sh start", "launch/cluster.yaml", "launch/rayjob.yaml", "launch/slurm.sh",
                   "--shared-storage", "s3://", "ray job submit", "--address"):
        assert needle in section, needle
    assert readme.index("## Running on a cluster") < readme.index("## Layout")
