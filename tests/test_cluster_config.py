"""deploy/cluster*.yaml, checked offline (no cloud, no network): Ray's own config schema accepts them and
rejects typos, their node types give the launcher's placement what it asks for (`learner` on one GPU node,
`actor` on autoscaled CPU nodes, neither on the head), nothing in them opens the replay or the dashboard
to the network, and every command they run exists (make targets, executables, `ray` subcommands and flags).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "deploy").glob("cluster*.yaml"))
CLOUD = ["cluster.yaml", "cluster-gcp.yaml"]
VENV_PATH = 'export PATH="$HOME/slac-dist/.venv/bin:$PATH"'
# The cluster's commands run with the venv's bin first on PATH (they export it); so does the check here.
PATH = os.pathsep.join([str(Path(sys.executable).parent), str(REPO / ".venv" / "bin"), os.environ.get("PATH", "")])
# Executables the cloud images have and this test machine need not: it runs as root without sudo, and has
# no GPU driver.
REMOTE_ONLY = {"sudo", "$SUDO", "nvidia-smi"}
# Words that open or close a shell construct: the command after them is checked, the construct itself not.
KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "!"}
SKIPPED = {"for", "fi", "done", "esac"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}"}
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy" / name).read_text())


def _validate(cfg: dict[str, Any]) -> None:
    """Ray's own check, the part `ray up` runs before it talks to any cloud."""
    validate_config(prepare_config(copy.deepcopy(cfg)))


def _commands(cfg: dict[str, Any]) -> list[str]:
    """Every shell command the YAML runs, node types' own lists included."""
    out = [c for key in COMMAND_KEYS for c in cfg.get(key) or []]
    for node_type in (cfg.get("available_node_types") or {}).values():
        out += [c for key in COMMAND_KEYS for c in node_type.get(key) or []]
    assert all(isinstance(c, str) for c in out), out
    return out


def _simple_commands(command: str) -> list[list[str]]:
    """The argv of each simple command in `command` (split at ; && || | and parentheses), with leading
    VAR=value assignments and shell keywords removed; `bash -c SCRIPT` contributes SCRIPT's commands."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argvs, argv = [], []
    for token in [*lexer, ";"]:
        if token in SEPARATORS:
            while argv and (argv[0] in KEYWORDS or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0])):
                argv = argv[1:]
            if argv and argv[0] not in SKIPPED:
                argvs.append(argv)
            argv = []
        else:
            argv.append(token)
    nested = []
    for argv in argvs:
        inner = _unwrap(argv)
        if inner[:1] in (["bash"], ["sh"]) and len(inner) >= 3 and inner[1] == "-c":
            nested += _simple_commands(inner[2])
    return argvs + nested


def _unwrap(argv: list[str]) -> list[str]:
    """The command that `sudo [VAR=value...] CMD` (or `$SUDO`, empty for root), `env VAR=value... CMD` or
    `timeout SECONDS CMD` runs."""
    if argv[0] in ("sudo", "$SUDO", "env"):
        rest = argv[1:]
        while rest and (rest[0].startswith("-") or "=" in rest[0]):
            rest = rest[1:]
        return _unwrap(rest) if rest else argv
    if argv[0] == "timeout" and len(argv) > 2:
        return _unwrap(argv[2:])
    return argv


def _all_argvs(cfg: dict[str, Any]) -> list[list[str]]:
    return [argv for command in _commands(cfg) for argv in _simple_commands(command)]


@functools.cache
def _shell_type(word: str) -> str:
    """bash's `type -t`: builtin, keyword, file (found on PATH), or '' when bash knows no such command."""
    done = subprocess.run(["bash", "-c", 'type -t "$1"', "type", word], capture_output=True, text=True,
                          env={**os.environ, "PATH": PATH}, timeout=30)
    return done.stdout.strip()


def _ray_help(*args: str) -> str:
    ray = Path(sys.executable).with_name("ray")
    done = subprocess.run([str(ray), *args, "--help"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": PATH})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def ray_start_flags() -> set[str]:
    """Every --flag `ray start` accepts (its --help is slow, so once per module)."""
    return set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", _ray_help("start")))


@pytest.fixture(scope="module")
def ray_subcommands() -> set[str]:
    return set(re.findall(r"^\s{2}([a-z][a-z0-9-]*)\s", _ray_help(), flags=re.MULTILINE))


def _makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.%/$()-][^:=#\s]*(?:\s+[^:=#\s]+)*)\s*:(?![=:])", line)
        if found and not line.startswith("\t"):
            targets.update(found.group(1).split())
    return targets


def test_three_cluster_yamls() -> None:
    assert [p.name for p in YAMLS] == ["cluster-gcp.yaml", "cluster-local.yaml", "cluster.yaml"]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_valid_against_rays_schema(path: Path) -> None:
    _validate(_load(path.name))


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    assert old in mapping, f"{old} not in {sorted(mapping)}"
    mapping[new] = mapping.pop(old)


def _top_level_typo(cfg: dict[str, Any]) -> None:
    _rename(cfg, "worker_start_ray_commands", "worker_start_ray_comands")


def _max_workers_typo(cfg: dict[str, Any]) -> None:
    _rename(cfg, "max_workers", "max_worker")


def _node_type_typo(cfg: dict[str, Any]) -> None:
    _rename(cfg["available_node_types"]["slac_actor_cpu"], "min_workers", "min_worker")


def _resource_type_error(cfg: dict[str, Any]) -> None:
    cfg["available_node_types"]["slac_learner_gpu"]["resources"]["learner"] = "1"


@pytest.mark.parametrize("name", CLOUD)
@pytest.mark.parametrize("mutate", [_top_level_typo, _max_workers_typo, _node_type_typo, _resource_type_error],
                         ids=lambda f: f.__name__.strip("_"))
def test_typo_is_rejected(name: str, mutate: Any) -> None:
    cfg = _load(name)
    _validate(cfg)  # the original passes, so the mutation is what fails
    mutate(cfg)
    with pytest.raises(jsonschema.ValidationError):
        _validate(cfg)


def test_local_typo_is_rejected() -> None:
    cfg = _load("cluster-local.yaml")
    _rename(cfg, "head_start_ray_commands", "head_start_ray_comands")
    with pytest.raises(jsonschema.ValidationError):
        _validate(cfg)


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_node_types_match_the_placement(name: str) -> None:
    cfg = _load(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert not {"learner", "actor", "GPU"} & set(head["resources"]), head["resources"]

    gpu = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert len(gpu) == 1, f"exactly one GPU node type expected, got {sorted(gpu)}"
    (gpu_name, learner), = gpu.items()
    assert gpu_name != cfg["head_node_type"]
    assert learner["resources"]["learner"] == 1
    assert learner["min_workers"] == learner["max_workers"] == 1
    assert not [n for n, t in types.items() if n != gpu_name and "learner" in t["resources"]]

    actor_types = {n: t for n, t in types.items() if "actor" in t["resources"]}
    assert len(actor_types) == 1, sorted(actor_types)
    (_, actors), = actor_types.items()
    assert actors["min_workers"] == 0 and actors["max_workers"] >= 1
    assert actors["resources"]["actor"] == actors["resources"]["CPU"] >= 1  # one actor per CPU
    assert "GPU" not in actors["resources"]
    assert cfg["max_workers"] >= learner["max_workers"] + actors["max_workers"]
    node = actors["node_config"]
    spot = node.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or node.get("scheduling", {}).get(
        "preemptible") is True
    assert spot, "actor nodes should be spot/preemptible"
    assert "InstanceMarketOptions" not in head["node_config"] and "preemptible" not in head["node_config"].get(
        "scheduling", {})


def test_local_roles_are_set_on_the_ray_start_lines() -> None:
    cfg = _load("cluster-local.yaml")
    assert "available_node_types" not in cfg  # the local provider has its single node type
    head = [a for c in cfg["head_start_ray_commands"] for a in _simple_commands(c) if a[:2] == ["ray", "start"]]
    workers = [a for c in cfg["worker_start_ray_commands"] for a in _simple_commands(c) if a[:2] == ["ray", "start"]]
    assert len(head) == len(workers) == 1
    assert '--resources={"learner":1}' in head[0]
    assert [a for a in workers[0] if a.startswith('--resources={"actor":')], workers[0]
    assert "actor" not in " ".join(head[0]) and "learner" not in " ".join(workers[0])


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_nothing_is_opened_to_the_network(path: Path) -> None:
    text = path.read_text()
    assert "0.0.0.0" not in text
    assert "protected-mode" not in text
    cfg = yaml.safe_load(text)
    for argv in _all_argvs(cfg):
        argv = _unwrap(argv)
        assert argv[0] != "redis-server", "the launcher starts the replay's Redis itself, secured"
        if any("redis-server" in a for a in argv):
            # Only installing the package (`make setup` needs the binary) and switching off its service.
            assert argv[0] == "apt-get" or (argv[0] == "systemctl" and argv[1] in ("cat", "disable", "stop")), argv
    starts = [a for c in cfg["head_start_ray_commands"] for a in _simple_commands(c) if a[:2] == ["ray", "start"]]
    assert len(starts) == 1 and "--dashboard-host=127.0.0.1" in starts[0], starts
    assert not [a for a in _all_argvs(cfg) if a[:2] == ["ray", "start"] and "--head" not in a
                and any(x.startswith("--dashboard-host") for x in a)]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_nodes_share_the_working_tree_the_venv_and_the_token(path: Path) -> None:
    cfg = _load(path.name)
    assert cfg["file_mounts"]["~/slac-dist"] == "."
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert {".venv", ".git", "runs"} <= set(cfg["rsync_exclude"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in cfg[key]:
            assert command.startswith(VENV_PATH + ";"), f"{key}: the venv's ray must be the one run: {command}"
            for argv in _simple_commands(command):
                if argv[:2] == ["ray", "start"]:
                    # Token authentication on every node; workers at niceness 0 (Ray's default is 15), so the
                    # learner runs above the actors and the evaluator (common/priority.py).
                    assert "RAY_AUTH_MODE=token RAY_worker_niceness=0 ray start" in command, command
    assert [c for c in cfg["setup_commands"] if re.fullmatch(r"cd ~/slac-dist && make setup", c)]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_command_exists(path: Path, ray_start_flags: set[str], ray_subcommands: set[str]) -> None:
    targets = _makefile_targets()
    assert "setup" in targets
    argvs = _all_argvs(_load(path.name))
    assert argvs
    for argv in argvs:
        for run in {tuple(argv), tuple(_unwrap(argv))}:
            exe = run[0]
            if exe in REMOTE_ONLY:
                continue
            if "/" in exe:  # relative to ~/slac-dist, where the commands `cd` first
                local = REPO / re.sub(r"^(~|\$HOME)/slac-dist/", "", exe)
                if exe.startswith(".venv/bin/") and not local.exists():  # tests run from another venv
                    local = Path(sys.executable).with_name(local.name)
                assert local.is_file() and os.access(local, os.X_OK), f"{exe} in {argv}"
            else:
                assert _shell_type(exe) in ("builtin", "keyword", "file"), f"`{exe}` is neither a shell builtin " \
                    f"nor on PATH ({' '.join(argv)})"
            if exe == "make":
                used = [a for a in run[1:] if not a.startswith("-") and "=" not in a]
                assert used and set(used) <= targets, f"{used} not among the Makefile's targets {sorted(targets)}"
            if exe == "ray":
                assert run[1] in ray_subcommands, f"`ray {run[1]}` is no ray subcommand"
                if run[1] == "start":
                    flags = {a.split("=", 1)[0] for a in run[2:] if a.startswith("--")}
                    assert flags <= ray_start_flags, f"unknown `ray start` flags: {flags - ray_start_flags}"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_cluster_up_refuses_a_shipped_yaml_until_its_placeholders_are_edited(path: Path, tmp_path: Path) -> None:
    """Each shipped YAML holds placeholders (AMI ids, a GCP project, machines' addresses): `make cluster-up`
    names the one it found and stops before `ray up`, which would fail later with a cloud or SSH error."""
    proc = subprocess.run(["make", "-s", "cluster-up", f"CLUSTER={path}", f"CLUSTER_FILE={tmp_path / 'cluster'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "still has a placeholder" in proc.stderr, proc.stderr
    assert re.search(r"\((ami-EDIT\S*|project_id: my-gcp-project|EDIT-head-ip)\)", proc.stderr), proc.stderr
    assert not (tmp_path / "cluster").exists()
