"""infra/: the cluster, KubeRay and Slurm files are parsed and checked for the fields their tools need; no secrets.
(The run on a real two-node cluster is in tests/integration/test_infra.py.)"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


INFRA = ROOT / "infra"


def load_yaml(relative: str):
    return yaml.safe_load((INFRA / relative).read_text())


def config_keys() -> set[str]:
    """Every dotted override key of the pipeline's configuration (harvest.replicas, launcher.gpus_per_arm, ...)."""
    import dataclasses

    from pipeline.config import PipelineConfig

    keys = set()
    for group in dataclasses.fields(PipelineConfig):
        keys.add(group.name)
        default = getattr(PipelineConfig(), group.name)
        if dataclasses.is_dataclass(default):
            keys.update(f"{group.name}.{f.name}" for f in dataclasses.fields(default))
    return keys


def test_every_override_in_infra_names_a_real_config_field():
    groups = r"(?:model|data|harvest|store|coder|train|launcher|sweep|ray|tracking|fit)"
    pattern = re.compile(rf"(?<![\w.-])({groups}\.[a-z_]+)=")
    known = config_keys()
    found = {}
    for path in INFRA.rglob("*"):
        if path.is_file():
            for key in pattern.findall(path.read_text()):
                found.setdefault(key, path.relative_to(INFRA))
    assert len(found) >= 8, found  # the scripts and manifests do pass overrides
    unknown = {k: str(p) for k, p in found.items() if k not in known}
    assert not unknown, f"overrides naming no field of pipeline/config.py: {unknown}"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        part = line.rstrip("\\").strip()
        current = f"{current} {part}" if current else part
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def test_dockerfile_builds_on_cuda_runs_as_non_root_and_bakes_in_no_secret():
    instructions = dockerfile_instructions((INFRA / "docker" / "Dockerfile").read_text())
    froms = [args.split()[0] for kind, args in instructions if kind == "FROM"]
    assert froms and all(image.startswith("nvidia/cuda:") for image in froms), froms
    users = [args.split(":")[0] for kind, args in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    runs = " ".join(args for kind, args in instructions if kind == "RUN")
    assert "torch" in runs and "pip install -e ." in runs  # a CUDA torch build, then the project as the README says
    for kind, args in instructions:
        if kind in ("ENV", "ARG"):
            pairs = (
                re.findall(r"([A-Za-z_]\w*)=(\S*)", args) if "=" in args else [tuple((args.split(None, 1) + [""])[:2])]
            )
            for name, value in pairs:
                assert not (SECRET_NAME.search(name) and value), f"{kind} {name} bakes a secret into the image"
        if kind in ("COPY", "ADD"):
            sources = [w for w in args.split()[:-1] if not w.startswith("--")]
            assert "." not in sources, f"{kind} {args}: the whole build context goes into the image"


def test_dockerignore_lets_in_only_what_the_image_copies():
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [ln.strip() for ln in ignore if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "the build context starts empty: runs, stores, virtualenvs and credentials stay out"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    instructions = dockerfile_instructions((INFRA / "docker" / "Dockerfile").read_text())
    copied = [
        w.rstrip("/")
        for kind, args in instructions
        if kind == "COPY"
        for w in args.split()[:-1]
        if not w.startswith("--")
    ]
    assert copied
    for source in copied:
        assert source in allowed, f"COPY {source} is excluded by the .dockerignore"
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    assert any(r.endswith(".env") for r in rules)


def test_ray_cluster_launcher_config_has_gpu_workers_bounds_and_the_shared_mount():
    config = load_yaml("ray/cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in config, key
    assert config["provider"]["type"] in ("aws", "gcp", "azure")
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types and config["head_node_type"] not in gpu_types
    for t in gpu_types.values():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"]
    shared = "/mnt/shared"
    commands = " ".join(config.get("initialization_commands", []) + config.get("setup_commands", []))
    assert f" {shared}" in commands and "mount" in commands
    assert any(f"{shared}:{shared}" in option for option in config["docker"]["run_options"])
    assert "~/.ray/auth_token" in config["file_mounts"]  # nodes share one Ray auth token, generated by the user
    assert config["docker"]["image"].startswith("<your-")
    for t in types.values():
        assert t["node_config"]["ImageId"].startswith("<your-")

    # Ray's own schema for the launcher, and its full check after the defaults `ray up` fills in.
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # a private module of Ray; its schema file above is the stable part
        return
    validate_config(prepare_config(config))


def test_ray_run_script_submits_harvest_sweep_and_fit_to_the_cluster():
    script = INFRA / "ray" / "run.sh"
    text = script.read_text()
    assert os.access(script, os.X_OK)
    assert "ray up" in text and "ray job submit" in text and "cluster.yaml" in text
    for stage in ("harvest", "sweep", "fit"):
        assert f"submit pipeline {stage}" in text
    assert "ray.address=auto" in text and "launcher=ray" in text and "harvest.gpus_per_replica=1" in text
    assert "WANDB_API_KEY" in text and "--runtime-env" in text


def pod_specs(cluster_spec: dict) -> list[tuple[str, dict, dict]]:
    """(group, rayStartParams, pod spec) for the head and every worker group."""
    head = cluster_spec["headGroupSpec"]
    pods = [("head", head["rayStartParams"], head["template"]["spec"])]
    for group in cluster_spec["workerGroupSpecs"]:
        pods.append((group["groupName"], group["rayStartParams"], group["template"]["spec"]))
    return pods


def check_cluster_spec(spec: dict, claim: str) -> str:
    """Checks a RayCluster spec (standalone or inside a RayJob); returns the shared volume's mount path."""
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert spec.get("authOptions", {}).get("mode") == "token"
    workers = spec["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= 1 and group["rayStartParams"]["num-gpus"] == str(gpus)
    mounts = set()
    for name, params, pod in pod_specs(spec):
        assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values must be strings"
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert claim in claims.values(), f"{name}: no volume from the claim {claim}"
        container = pod["containers"][0]
        assert container["image"].startswith("<your-")
        for mount in container["volumeMounts"]:
            if claims.get(mount["name"]) == claim:
                mounts.add(mount["mountPath"])
        env = {e["name"]: e for e in container.get("env", [])}
        assert "value" not in env["WANDB_API_KEY"] and env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert len(mounts) == 1, f"every pod mounts the shared volume at one path, got {mounts}"
    return mounts.pop()


def entrypoint_stages(entrypoint: str) -> list[list[str]]:
    """The pipeline commands of a RayJob entrypoint, split as KubeRay's submitter shell and then Ray's do."""
    import shlex

    words = shlex.split(entrypoint)  # the submitter runs `ray job submit ... -- <entrypoint>` through bash
    assert words[:2] == ["bash", "-c"] and len(words) == 3, "the && must stay inside one quoted bash -c"
    return [shlex.split(part) for part in words[2].split("&&")]


def test_kuberay_manifests_define_a_gpu_cluster_and_a_job_that_harvests_then_sweeps():
    from conftest import compose

    pvc = load_yaml("k8s/pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert pvc["spec"]["storageClassName"].startswith("<your-")
    claim = pvc["metadata"]["name"]

    cluster = load_yaml("k8s/raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    check_cluster_spec(cluster["spec"], claim)

    job = load_yaml("k8s/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    assert spec["rayClusterSpec"] == cluster["spec"], "rayjob.yaml runs on the cluster of raycluster.yaml"
    mount = check_cluster_spec(spec["rayClusterSpec"], claim)

    stages = entrypoint_stages(spec["entrypoint"])
    assert [s[:2] for s in stages] == [["pipeline", "harvest"], ["pipeline", "sweep"]]
    out_dirs = set()
    for words in stages:
        cfg = compose(*words[2:])  # every override is valid for the pipeline's configuration
        assert cfg.ray.address == "auto"
        out_dirs.add(cfg.out_dir)
    assert len(out_dirs) == 1 and out_dirs.pop().startswith(mount + "/")
    assert compose(*stages[1][2:]).launcher.name == "ray"


def test_slurm_script_starts_ray_over_the_allocation_then_harvests_and_sweeps():
    text = (INFRA / "slurm" / "ray_sweep.sbatch").read_text()
    lines = text.splitlines()
    first_command = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    directives = [i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")]
    assert directives and max(directives) < first_command  # sbatch reads #SBATCH lines only up to the first command
    options = " ".join(lines[i] for i in directives)
    for option in ("--nodes=", "--gpus-per-node=", "--cpus-per-task=", "--time="):
        assert option in options, option
    assert "ray start --head" in text and "ray start --block --address=" in text
    assert text.count('--num-cpus="$cpus_per_node"') == 2 and text.count('--num-gpus="$gpus_per_node"') == 2
    assert "scontrol show hostnames" in text and '--exclude="$head_node"' in text
    assert "pipeline harvest" in text and "pipeline sweep" in text and "ray.address=auto" in text
    assert "WANDB_API_KEY" in text


SUBMITIT_SLURM_FIELDS = {  # hydra_submitit_launcher 1.2's SlurmQueueConf
    "_target_", "submitit_folder", "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
    "nodes", "name", "stderr_to_stdout", "partition", "qos", "comment", "constraint", "exclude", "gres",
    "cpus_per_gpu", "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "account", "signal_delay_s", "max_num_timeout",
    "additional_parameters", "array_parallelism", "setup",
}  # fmt: skip


def test_submitit_launcher_config_is_one_gpu_job_per_arm():
    path = INFRA / "slurm" / "hydra" / "launcher" / "slurm_arm.yaml"
    assert path.read_text().startswith("# @package hydra.launcher")
    config = yaml.safe_load(path.read_text())
    assert config["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert set(config) <= SUBMITIT_SLURM_FIELDS, set(config) - SUBMITIT_SLURM_FIELDS
    assert config["nodes"] == 1 and config["tasks_per_node"] == 1 and config["gpus_per_node"] >= 1
    assert config["timeout_min"] > 0 and config["array_parallelism"] > 0
    try:
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:
        return  # the plugin is not a dependency of the project; the field list above stands in for it
    import dataclasses

    from omegaconf import OmegaConf

    assert set(config) <= {f.name for f in dataclasses.fields(SlurmQueueConf)}
    OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), OmegaConf.create(config))  # the types check too


def test_readme_gives_a_recipe_per_target_and_says_what_is_shared():
    text = (INFRA / "README.md").read_text()
    assert text.startswith("## Running on a cluster")
    for target in ("Ray cluster launcher", "KubeRay", "Slurm", "Dockerfile"):
        assert target in text, target
    for path in ("infra/ray/run.sh", "infra/k8s/rayjob.yaml", "infra/slurm/ray_sweep.sbatch", "slurm_arm.yaml"):
        assert path in text, path
    assert "store" in text and "sweep directory" in text and "WANDB_API_KEY" in text


SHELL_SCRIPTS = sorted(p for p in INFRA.rglob("*") if p.is_file() and p.read_text().startswith("#!/usr/bin/env bash"))


def test_infra_has_the_shell_scripts():
    assert {p.name for p in SHELL_SCRIPTS} == {"run.sh", "ray_sweep.sbatch", "bench.sh", "peer-wheels.sh"}


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, *map(str, SHELL_SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


LEAKS = {
    "private IPv4 address": re.compile(
        r"(?<![\d.])(?:10(?:\.\d{1,3}){3}|192\.168(?:\.\d{1,3}){2}|172\.(?:1[6-9]|2\d|3[01])(?:\.\d{1,3}){2})(?![\d.])"
    ),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS account or ARN": re.compile(r"\barn:aws|\b\d{12}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_\w{20,}"),
    "Slack or OpenAI style token": re.compile(r"\bxox[abprs]-[\w-]{10,}|\bsk-[A-Za-z0-9]{20,}"),
    "40-hex key (a W&B API key)": re.compile(r"\b[0-9a-f]{40}\b"),
    "literal credential": re.compile(
        r"(?i)(?:api[_-]?key|token|secret|password)[\"']?\s*[:=]\s*[\"']?(?![$<{(])[A-Za-z0-9/+_\-]{16,}"
    ),
    "e-mail address": re.compile(r"[\w.+-]+@(?!example\.)[\w-]+\.[a-z]{2,}"),
}


def leaks(text: str) -> list[str]:
    return [f"{kind}: {m.group(0)!r}" for kind, pattern in LEAKS.items() for m in pattern.finditer(text)]


def test_leak_patterns_catch_what_they_should():
    assert leaks("ssh 10.0.3.7")[0].startswith("private IPv4")
    assert leaks("--address=192.168.1.20:6379") and leaks("172.31.0.5") and not leaks("172.32.0.5 or 2.10.0.1")
    assert leaks("AKIA" + "ABCDEFGHIJKLMNOP") and leaks("WANDB_API_KEY=" + "0123456789abcdef" * 2 + "01234567")
    assert leaks("password: hunter2hunter2hunter2") and leaks("mail me: someone@university.edu")
    assert not leaks('WANDB_API_KEY=$(<"$WANDB_API_KEY_FILE")') and not leaks("key: api-key, optional: true")


@pytest.mark.parametrize(
    "path", sorted(p for p in INFRA.rglob("*") if p.is_file()), ids=lambda p: str(p.relative_to(INFRA))
)
def test_no_secret_private_address_or_account_in_infra(path):
    found = leaks(path.read_text())
    assert not found, f"{path.relative_to(INFRA)}: {found}"
