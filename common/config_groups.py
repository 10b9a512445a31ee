"""The groups of the config tree (model, sac, replay, actors, learner, task, run): frozen dataclasses, each
field with the paper's value or the official implementation's where the paper is silent, and the checks each
group makes of itself. `common.config.Config` holds one of each; import them from there.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import tyro

from common.tasks import UnknownTaskError, parse_task


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_finite(group: Any, prefix: str) -> None:
    """Every float field of `group` must be a finite number: NaN slips through comparisons (NaN > 0 is False, but
    so is NaN <= 0) and inf through positivity checks, and either would poison a run long after it started."""
    for f in dataclasses.fields(group):
        values = getattr(group, f.name)
        for value in values if isinstance(values, tuple) else (values,):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{prefix}.{f.name} must be a finite number, got {value}")


def _check_positive(group: Any, prefix: str, *names: str) -> None:
    """Every named field of `group` must be > 0."""
    for name in names:
        value = getattr(group, name)
        _check(value > 0, f"{prefix}.{name} must be positive, got {value}")


REDACTED = "***"
"""What a password becomes in every record of a URL (config.json, checkpoints, W&B, summaries, messages)."""


def redact(url: str) -> str:
    """The URL with any password replaced (`user:pass@`, `:pass@`, `?password=`): the one form in which a replay URL
    is written, logged or shown, so that a run directory, a log or a W&B run can be shared."""
    url = re.sub(r"//([^/:@]*):[^/]*@", rf"//\1:{REDACTED}@", url)  # up to the last @ before the path
    return re.sub(r"([?&]password=)[^&#]*", rf"\1{REDACTED}", url)


def is_redacted(url: str) -> bool:
    """Whether `url` is a record's copy whose password `redact` replaced, i.e. no longer one to connect with."""
    return "//" in url and (f":{REDACTED}@" in url or f"password={REDACTED}" in url)


PUBLISHED_PIXEL_VARIANCE = {"cartpole_swingup": 0.1, "finger_spin": 0.1, "cheetah_run": 0.1, "walker_walk": 0.4,
                            "ball_in_cup_catch": 0.04}
"""The decoder variance of the official SLAC result files' best runs per task (mean return up to 500k environment
steps; the files deploy/experiments/published.py quotes): what `model.pixel_variance: auto` gives these tasks, so a
paper-preset run is comparable to the published curve it is plotted against. Appendix B gives one value, 0.1."""
DEFAULT_PIXEL_VARIANCE = 0.1
"""`model.pixel_variance: auto` on a task outside PUBLISHED_PIXEL_VARIANCE: appendix B's value."""


@dataclass(frozen=True)
class ModelConfig:
    """The sequential latent variable model of section 6 and appendix B."""

    z1_dim: int = 32
    """Size of the first latent layer z1 (appendix B)."""
    z2_dim: int = 256
    """Size of the second latent layer z2 (appendix B)."""
    hidden_dim: int = 256
    """Width of the two fully connected layers of every Gaussian head (appendix B)."""
    conv_channels: tuple[int, int, int, int, int] = (32, 64, 128, 256, 256)
    """Encoder conv filters (appendix B); the last is the feature size, the decoder mirrors them."""
    pixel_variance: float | Literal["auto"] = "auto"
    """Fixed variance of each pixel of the decoder's Gaussian p(x|z) (appendix B). auto: the value the official
    SLAC result files did best with on the task (PUBLISHED_PIXEL_VARIANCE), 0.1 on any other task; a run
    records the number in config.json."""
    sequence_length: int = 8
    """tau: past observations the actor sees; replay windows hold tau + 1 frames (appendix C)."""
    lr: float = 1e-4
    """Adam learning rate of the model (appendix C)."""
    batch_size: int = 32
    """Sequences per model update (appendix C)."""
    image_size: int = 64
    """Observations are image_size x image_size RGB (section 7)."""

    @property
    def feature_dim(self) -> int:
        """Size of the encoder's output features (256 in the paper)."""
        return self.conv_channels[-1]

    def __post_init__(self) -> None:
        _check_finite(self, "model")
        _check_positive(self, "model", "z1_dim", "z2_dim", "hidden_dim", "sequence_length", "batch_size", "lr")
        _check(self.pixel_variance == "auto" or (isinstance(self.pixel_variance, (int, float))
                                                 and self.pixel_variance > 0),
               f"model.pixel_variance must be a positive number or auto, got {self.pixel_variance!r}")
        _check(all(c > 0 for c in self.conv_channels), f"model.conv_channels must be positive: {self.conv_channels}")
        _check(self.image_size == 64, f"model.image_size: the conv stack of appendix B needs 64, got {self.image_size}")


@dataclass(frozen=True)
class SacConfig:
    """Twin soft Q critics and the tanh-Gaussian actor (section 5, SAC hyperparameters of appendix C)."""

    hidden_dim: int = 256
    """Width of the two fully connected layers of the critics and the actor (appendix B)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor (appendix C)."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics (appendix C)."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log alpha (SAC's default)."""
    batch_size: int = 256
    """Sequences per critic/actor update (appendix C)."""
    gamma: float = 0.99
    """Discount (SAC's default)."""
    target_update_coef: float = 0.005
    """EMA coefficient of the target critics after each critic step (Polyak, SAC's default)."""
    auto_entropy: bool = True
    """Tune the temperature alpha toward the target entropy (SAC v2)."""
    init_alpha: float = 1.0
    """Initial temperature (the official implementation starts log alpha at 0)."""
    target_entropy: float | None = None
    """Target entropy for alpha tuning; None means -|A|."""

    def __post_init__(self) -> None:
        _check_finite(self, "sac")
        _check_positive(self, "sac", "hidden_dim", "batch_size", "actor_lr", "critic_lr", "alpha_lr", "init_alpha")
        _check(0.0 <= self.gamma <= 1.0, f"sac.gamma must lie in [0, 1], got {self.gamma}")
        _check(0.0 < self.target_update_coef <= 1.0,
               f"sac.target_update_coef must lie in (0, 1], got {self.target_update_coef}")


@dataclass(frozen=True)
class ReplayConfig:
    """The Redis-backed sequence replay between actors and learner."""

    url: str = ""
    """redis://host:port/db of an existing server (a cluster); empty starts an embedded redis-server."""
    port: int = 0
    """Port of the embedded server; 0 picks a free one below the ephemeral range (kept across its restarts)."""
    capacity: int = 100_000
    """Transitions kept, FIFO (appendix C: 100 000 steps, one frame each)."""
    frame_reserve: float = 0.05
    """Extra frame slots for episodes' first frames, as a fraction of capacity (shorter episodes keep fewer steps)."""
    min_size: int = 1_000
    """Transitions stored before the learner may sample."""
    samples_per_insert: float = 1.0
    """Target learner updates per inserted transition (appendix C: one gradient step per agent step)."""
    spi_tolerance: float = 1_000.0
    """How far (in transitions) inserts may run ahead of / behind the target ratio before blocking."""
    writer_timeout_s: float = 60.0
    """How long a blocked writer waits for the learner before raising."""
    flush_every: int = 50
    """Steps a writer buffers before a pipelined, atomic flush (and always at episode end)."""
    compress: bool = True
    """lz4-compress frames in Redis (saves memory; the mirror stays raw)."""
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    """AOF fsync policy of the embedded server."""
    connect_timeout_s: float = 5.0
    """How long to wait for Redis before failing with a clear error."""
    audit: bool = False
    """Each writer appends one line per acknowledged flush to <run dir>/audit/<writer>.log (first row, then the
    SHA-1 of each row as stored); `python -m deploy.audit <run dir>` then checks that every acknowledged row is
    in the replay unchanged. On a cluster each actor node keeps its own writers' files."""

    def __post_init__(self) -> None:
        _check_finite(self, "replay")
        _check(self.capacity > 0, f"replay.capacity must be positive, got {self.capacity}")
        _check(0 < self.min_size <= self.capacity,
               f"replay.min_size must lie in (0, capacity={self.capacity}], got {self.min_size}")
        _check(self.samples_per_insert > 0, f"replay.samples_per_insert must be positive, got {self.samples_per_insert}")
        _check(self.spi_tolerance > 0, f"replay.spi_tolerance must be positive, got {self.spi_tolerance}")
        _check(0.0 <= self.frame_reserve <= 1.0, f"replay.frame_reserve must lie in [0, 1], got {self.frame_reserve}")
        _check(self.flush_every > 0, f"replay.flush_every must be positive, got {self.flush_every}")
        _check(0 <= self.port < 65536, f"replay.port must be a TCP port, got {self.port}")
        _check(self.url == "" or self.url.startswith(("redis://", "unix://")),
               f"replay.url must look like redis://host:port/db, got {redact(self.url)!r}")


@dataclass(frozen=True)
class ActorsConfig:
    """The Ray actor processes that step environments."""

    num: int | Literal["auto"] = "auto"
    """Number of actor processes. auto (deploy/run/ray_runtime.resolve_processes): on a private local Ray with a
    CUDA learner, the machine's cores less the learner, the evaluator and Redis (at least 1), so a GPU
    workstation's cores all step environments; with a CPU learner one per 8 cores (at least 1): one actor makes
    ~180 agent steps/s, a CPU learner 20-60 updates/s, one per agent step; on a Ray cluster, `cluster_num`."""
    cluster_num: int = 2
    """What `num: auto` means on a Ray cluster, where the autoscaler adds actor nodes for them."""
    envs_per_actor: int = 4
    """Environments each actor steps, batching the policy forward over them: 4 gave the most agent steps/s
    per core with the paper policy on a 2-core EPYC machine, 1.02-1.31x those of 1 on every task (2 was
    slowest). See bench/results/vm-2026-11-25-actor-envs-per-actor.json and `bench/actor.py`."""
    weight_sync_every: int = 100
    """Agent steps between checks for newer policy weights."""
    max_restarts: int = 10
    """How often Ray restarts a crashed actor process."""
    num_cpus: float = 1.0
    """CPUs Ray reserves per actor."""
    nice: int = 19
    """Unix niceness (0-19) of the actor and evaluator processes, every thread of them: a run is learner-bound, so
    the learner (niceness 0) must never lose a core to an actor's or an evaluation's burst. Measured on 2 cores:
    a 2-thread learner update beside a nice-19 process 11 % busy runs at its speed alone, beside a nice-0 one at
    0.74 of it (its OpenMP threads wait for the preempted one). 0 leaves them at the learner's priority."""
    node_resource: str = "actor"
    """On a Ray cluster, the custom resource each actor also asks one unit of, so actors run on the nodes that
    advertise it (deploy/cluster*.yaml's actor node type, which the autoscaler adds as actors are asked for) and
    never on the head or the learner's GPU node; empty places them anywhere. Unused on a private local Ray."""

    def __post_init__(self) -> None:
        _check_finite(self, "actors")
        _check(self.num == "auto" or (isinstance(self.num, int) and self.num > 0),
               f"actors.num must be a positive number or auto, got {self.num!r}")
        _check_positive(self, "actors", "cluster_num", "envs_per_actor", "weight_sync_every")
        _check(self.max_restarts >= 0, f"actors.max_restarts must be >= 0, got {self.max_restarts}")
        _check(0 <= self.nice <= 19, f"actors.nice must be a niceness from 0 to 19, got {self.nice}")


@dataclass(frozen=True)
class LearnerConfig:
    """The learner process: phases, publication, checkpoints."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the networks and the replay mirror live; auto picks cuda when available."""
    initial_collection_agent_steps: int = 10_000
    """Agent steps (policy decisions, each `action repeat` environment steps) of uniform random actions before
    training: official SLAC's 10 000, i.e. 40 000 environment steps on cheetah_run."""
    model_pretrain_steps: int = 100_000
    """Model-only updates on the initial data before joint training (official SLAC: 100 000)."""
    publish_every: int = 100
    """Updates between actor-weight publications."""
    checkpoint_every: int = 10_000
    """Updates between checkpoints."""
    checkpoint_every_s: float = 600.0
    """Seconds between checkpoints whatever the update count: at most this much learner work is lost when the
    learner process dies."""
    cpus: int | Literal["auto"] = "auto"
    """Cores for the learner: Ray's CPUs for it and torch's intra-op threads in it (Ray alone would give a one-CPU
    process one thread). auto (deploy/run/ray_runtime.resolve_processes): with a CUDA learner 1 (its host side is
    one Python thread launching kernels); with a CPU learner on this machine every core but the actors' and one
    for Redis, the driver and Ray (1 on 2 cores: there a whole run with 2 threads made 0.75x the updates/s of
    one, bench/results/vm-2026-12-06-whole-run*.json); on a Ray cluster 1 (a number for a CPU learner node)."""
    max_restarts: int = 3
    """Times a learner process that dies is restarted from the newest checkpoint before the run gives up."""
    node_resource: str = "learner"
    """On a Ray cluster, the custom resource the learner asks one unit of: it runs on the node that advertises
    it (deploy/cluster*.yaml's GPU node type), using that node's GPU; empty places it anywhere. Unused on a
    private local Ray."""
    node_wait_s: float = 1800.0
    """On a cluster, how long the driver waits for a node with `node_resource` to join (a cloud GPU node
    takes minutes to boot and run `make setup`) before it stops with an error."""
    log_every_s: float = 1.0
    """Seconds between the driver's polls of every process, i.e. between W&B scalar rows."""
    figure_every: int = 10_000
    """Updates between figure-7 style model sample grids."""
    compile: Literal["auto", "none", "default", "reduce-overhead", "max"] = "auto"
    """torch.compile of the update's loss passes: none (eager), default (inductor), reduce-overhead (inductor and CUDA
    graphs: a captured update replays with one launch instead of ~800 from the CPU), max (max-autotune, also with
    CUDA graphs; long compiles). Without CUDA, reduce-overhead is default and max drops the graphs. auto =
    reduce-overhead on CUDA (if capturing fails the learner warns once and goes on with default), default on a CPU
    with a C++ compiler (1.12-1.22x on 2 cores, bench/results), else none. Compiling costs 1-2 minutes once per
    process (less with inductor's disk cache)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 autocast of convolutions and matrix products (losses, KL, log-probabilities and Adam stay fp32);
    auto = bf16 on CUDA, fp32 on CPU (bf16 needs a CPU with native bf16, e.g. AVX512-BF16, to pay off)."""
    metrics_every: int = 50
    """Updates between fetches of the device-side metric sums to the host; the finiteness check runs at the
    same time, so a non-finite loss stops the run within this many updates."""
    replay_every: int | Literal["auto"] = "auto"
    """Updates per round trip to Redis: the mirror sync, the rate limiter's check and `record_samples` happen once
    per block of this many updates (capped at a quarter of replay.spi_tolerance * samples_per_insert, so writers
    never stall on a block). auto: 10 on a CPU; on CUDA 100, since each sync stalls the GPU's stream for its
    host-to-device copies and a fast learner would sync every few milliseconds."""

    def __post_init__(self) -> None:
        _check_finite(self, "learner")
        _check(self.initial_collection_agent_steps >= 0,
               f"learner.initial_collection_agent_steps must be >= 0, got {self.initial_collection_agent_steps}")
        _check(self.model_pretrain_steps >= 0,
               f"learner.model_pretrain_steps must be >= 0, got {self.model_pretrain_steps}")
        _check_positive(self, "learner", "publish_every", "checkpoint_every", "checkpoint_every_s", "log_every_s",
                        "figure_every", "metrics_every", "node_wait_s")
        _check(self.replay_every == "auto" or (isinstance(self.replay_every, int) and self.replay_every > 0),
               f"learner.replay_every must be a positive number or auto, got {self.replay_every!r}")
        _check(self.max_restarts >= 0, f"learner.max_restarts must be >= 0, got {self.max_restarts}")
        _check(self.cpus == "auto" or (isinstance(self.cpus, int) and self.cpus > 0),
               f"learner.cpus must be a positive number or auto, got {self.cpus!r}")


@dataclass(frozen=True)
class TaskConfig:
    """How the task `run.task` names is stepped and drawn: auto takes the registry's value (table 1 for the paper's
    tasks) or, for a task outside it, the documented defaults of common/tasks.DEFAULTS. A run starts by resolving
    every auto to a number (config.json holds the numbers), and a resume refuses a changed one."""

    action_repeat: int | Literal["auto"] = "auto"
    """Environment steps per agent step, rewards summed (table 1; the policy decides once per repeat)."""
    episode_length: int | Literal["auto"] = "auto"
    """Environment steps per episode before the time limit truncates it."""
    camera: int | Literal["auto", "default"] = "auto"
    """Camera id the frames are rendered from; default: the env's own camera."""
    render: Literal["fast", "antialiased", "full"] = "fast"
    """How a MuJoCo env draws frames (common/tasks.RENDER_QUALITIES): fast (no shadows or multisampling),
    antialiased (4x multisampling) or full (the model's own, shadows included). Other envs: their render()."""
    suite: Annotated[str, tyro.conf.Suppress] = ""
    """Where the env comes from (dmc, gym, custom), written when the run resolves its task; not a setting."""
    env_id: Annotated[str, tyro.conf.Suppress] = ""
    """The dm_control domain/task, gymnasium id or module:callable, written when the run resolves its task."""

    def __post_init__(self) -> None:
        for name in ("action_repeat", "episode_length"):
            value = getattr(self, name)
            _check(value == "auto" or (isinstance(value, int) and value > 0),
                   f"task.{name} must be a positive number or auto, got {value!r}")
        _check(self.camera in ("auto", "default") or (isinstance(self.camera, int) and self.camera >= -1),
               f"task.camera must be a camera id (-1: the free camera), default or auto, got {self.camera!r}")

    @property
    def resolved(self) -> bool:
        """Whether every setting is a value (the run's start resolved them), not auto."""
        return bool(self.suite) and "auto" not in (self.action_repeat, self.episode_length, self.camera)


@dataclass(frozen=True)
class RunConfig:
    """What to run and where to put it."""

    task: str = "cheetah_run"
    """A registered task (`make tasks`: the paper's eight, e.g. hopper), dmc:<domain>/<task>, gym:<id>, or
    <module>:<callable> returning a gymnasium.Env; its settings are the `task` group's."""
    seed: int = 0
    """Run seed; every actor and environment derives its own from it."""
    env_steps: int = 1_000_000
    """Environment steps to train for (the paper's x-axis: agent steps x action repeat)."""
    eval_every: int = 10_000
    """Environment steps between evaluations."""
    eval_episodes: int = 10
    """Episodes per evaluation, with the stochastic policy (appendix C)."""
    video_every: int = 5
    """Evaluations between W&B videos of an evaluation's first episode (1: every one); the step-0 and the final
    evaluation always record one."""
    dir: str = ""
    """Run directory; empty means runs/<task>-<timestamp>."""
    resume: str = ""
    """Run directory to resume (same W&B run, counters and replay)."""
    wandb_project: str = "slac-dist"
    """W&B project."""
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when WANDB_API_KEY or WANDB_MODE is set, else offline."""
    group: str = ""
    """W&B group: runs that belong together (`make reproduce` sets <task>-<preset>, so W&B shows the mean
    and band over its seeds); empty: none."""
    job_type: str = "train"
    """W&B job type (`make reproduce` sets `reproduce`)."""
    tags: tuple[str, ...] = ()
    """W&B tags (`make reproduce` sets task, preset, seed and commit)."""
    name: str = ""
    """W&B run name; empty: the run directory's name."""
    min_free_mb: float = 200.0
    """Free space the run directory's disk keeps beyond the next replay snapshot and checkpoint: below it the run
    stops cleanly (one paragraph, the newest checkpoint intact) instead of filling the disk (deploy/run/disk.py)."""

    def __post_init__(self) -> None:
        _check_finite(self, "run")
        # Canonicalise aliases so config.json and run names always carry the registry's name. Only the string's
        # form is checked here; whether the env exists is checked by building one before a run starts.
        try:
            object.__setattr__(self, "task", parse_task(self.task).name)
        except UnknownTaskError as exc:
            raise ConfigError(str(exc)) from None
        _check_positive(self, "run", "env_steps", "eval_every", "video_every")
        _check(self.eval_episodes >= 0, f"run.eval_episodes must be >= 0, got {self.eval_episodes}")
        _check(self.min_free_mb >= 0, f"run.min_free_mb must be >= 0, got {self.min_free_mb}")
