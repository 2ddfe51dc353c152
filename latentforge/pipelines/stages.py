"""A stage is a description: what Ray runs, how, with which resources, when, and how `plan`
says it. A pipeline is a plain list of stages (docs/architecture.md); `runtime.py` applies the
list to a Ray Dataset and `plan` prints the same list, so the two cannot drift apart.

Kinds, in Ray Data's words:
- `source`   the first rows of a pass: `read(job)` gives a list (made on the driver; Ray:
             FromItems) or a Ray Dataset (read on the cluster, e.g. ReadParquet)
- `map`      one row in, one row out, as tasks;                     Ray: Map(<op>)
- `flat_map` one row in, any number out, as tasks;                  Ray: FlatMap(<op>)
- `batches`  a function over a numpy batch, as tasks;               Ray: MapBatches(<op>)
- `actors`   a class holding a model, in an autoscaling actor pool; Ray: MapBatches(<op>)
- `write`    a Datasink that ends the pass;                         Ray: Write
A pass is a `source` followed by stages up to its `write`; a pipeline may hold several passes
(precompute: video, then text).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from latentforge.operators.base import Resources

Kind = Literal["source", "map", "flat_map", "batches", "actors", "write"]
KINDS: tuple[str, ...] = ("source", "map", "flat_map", "batches", "actors", "write")

# What row stages that only move a few fields around ask for: a quarter CPU, so they never hold
# a core that decoding needs.
LIGHT = Resources(num_cpus=0.25)
DRIVER = Resources(num_cpus=0)


@dataclass
class Job:
    """One run of a pipeline: its config, whether model actors get GPUs, and what the driver
    learns on the way (`state`: what stages' setup found; `results`: what each sink counted;
    `phase_seconds`: wall time of each pass; `embedded`: the run started its own local Ray).
    `plan` builds one too, without running anything."""

    cfg: Any
    use_gpus: bool
    state: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    embedded: bool = False


def always(cfg: Any) -> bool:
    return True


def no_args(job: Job) -> dict[str, Any]:
    return {}


def output_args(job: Job) -> dict[str, Any]:
    """What a sink needs to write under the output."""
    return {"output": job.cfg.output, "storage_options": job.cfg.storage_options}


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline.

    `args(job)` gives the op's keyword arguments (a function's `fn_kwargs`, an actor's
    constructor kwargs, a sink's constructor kwargs); `setup(job)` runs on the driver before the
    pass is built (read a resume cache, check the input) and keeps what it finds in `job.state`.
    `resources` is what the op declares; `config` names the config section whose `num_cpus`,
    `num_gpus` and `memory` (where it has them and they are set) override it, and for `actors`
    the pool's `min_actors`, `max_actors` and `batch_size`. `node_threads`: a CPU-only actor
    sets torch's threads from its node's CPUs (it gets `cpu_actors_per_node`). A `source` reads
    the rows of its pass (`read`), names the pass (`phase`, in run.json), and when it hands over
    a Ray Dataset, names the operators Ray runs for it (`operators`). `after(job)` runs on the
    driver once a `write` has finished (an index over what the pass wrote).
    """

    name: str
    kind: Kind
    op: Any
    describe: Callable[[Job], str]
    resources: Resources = DRIVER
    enabled: Callable[[Any], bool] = always
    args: Callable[[Job], dict[str, Any]] = no_args
    setup: Callable[[Job], None] | None = None
    config: str | None = None
    batch_size: Callable[[Job], int | None] | None = None
    node_threads: bool = False
    read: Callable[[Job], Any] | None = None
    phase: str | None = None
    operators: tuple[str, ...] = ()
    after: Callable[[Job], None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"stage {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "source") != (self.read is not None):
            raise ValueError(f"stage {self.name}: a source and only a source has `read`")

    @property
    def ray_name(self) -> str:
        """The operator name Ray Data gives this stage in its stats and progress bars."""
        if self.operators:
            return " + ".join(self.operators)
        if self.kind == "source":
            return "FromItems"
        if self.kind == "write":
            return "Write"
        label = {"map": "Map", "flat_map": "FlatMap", "batches": "MapBatches", "actors": "MapBatches"}[self.kind]
        return f"{label}({self.op.__name__})"


def active(stages: list[Stage], cfg: Any) -> list[Stage]:
    """The stages of a list that this config runs."""
    return [s for s in stages if s.enabled(cfg)]
