"""Start or join Ray for a CLI command: the cluster named by ``RAY_ADDRESS``, else a local one.

Under a CLI command's quiet console (:mod:`rayalign.console`) Ray's own log lines and the
output it forwards from workers go to the run's log file instead of the console.

**Never hang on resources.** Ray queues work it cannot place and waits forever: two Train
workers that reserve both CPUs of a laptop leave Ray Data no CPU to read their data, and
the run sits at step 0. So every command that runs Ray work first works out what one unit
of its work needs *at once* (:class:`Need`: Train workers plus the Ray Data task feeding
them, reference-scoring actors plus the task feeding them, Serve replicas, concurrent sweep
trials) and :func:`init_ray` either fits it or refuses:

- a **local** Ray it starts gets ``max(os.cpu_count(), needed)`` *logical* CPUs (threads
  stay bounded by ``torch_threads``; Ray's CPU count is a scheduling token, not a core);
  GPUs and custom resources cannot be invented, so a shortfall there is an error;
- a **cluster** (``RAY_ADDRESS``, or a Ray this process already joined) is checked against
  its total resources and, per bundle, its largest node; when it cannot hold the unit the
  command stops at once with a :class:`~rayalign.errors.UserError` naming what is needed
  and what is there. (An autoscaling cluster whose nodes are not up yet is refused too:
  start the nodes, or set ``RAYALIGN_SKIP_RESOURCE_CHECK=1``.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rayalign.errors import UserError

if TYPE_CHECKING:
    from rayalign.config import DataConfig, EvalConfig, TrainConfig


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that sets torch's intra-op threads in a Ray worker (Ray otherwise sets
    ``OMP_NUM_THREADS`` to the worker's CPU reservation)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


@dataclass(frozen=True)
class Need:
    """What one unit of work holds at the same time.

    ``bundles`` are the resource requests that must each land on one node (a Train worker,
    a Serve replica, a Ray Data task), e.g. ``[{"CPU": 1, "GPU": 1}] * 2 + [{"CPU": 1}]``;
    ``what`` says in words where they come from (it goes into error messages).
    """

    what: str
    bundles: tuple[Mapping[str, float], ...] = field(default_factory=tuple)

    def total(self) -> dict[str, float]:
        """Summed resources of all bundles, e.g. ``{"CPU": 3.0, "GPU": 2.0}`` (zeros dropped)."""
        out: dict[str, float] = {}
        for bundle in self.bundles:
            for name, amount in bundle.items():
                if amount:
                    out[name] = out.get(name, 0.0) + float(amount)
        return out


def largest(needs: Iterable[Need]) -> Need:
    """The unit needing the most (CPU, then GPU) of units that run one after another."""
    needs = list(needs)
    return max(needs, key=lambda n: (n.total().get("GPU", 0.0), n.total().get("CPU", 0.0)))


def _fmt(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items())) or "nothing"


def check_fit(
    need: Need, total: Mapping[str, float], nodes: list[Mapping[str, float]] | None = None
) -> None:
    """Raise :class:`UserError` when ``total`` (a cluster's resources) cannot hold ``need``.

    ``nodes`` (each alive node's resources), when given, also checks that every bundle
    fits on one node. Pure: callers pass ``ray.cluster_resources()`` and the node list.
    """
    wanted = need.total()
    short = {k: v - total.get(k, 0.0) for k, v in wanted.items() if total.get(k, 0.0) + 1e-9 < v}
    if short:
        raise UserError(
            f"Ray cannot run {need.what}: it needs {_fmt(wanted)} at once, the cluster has "
            f"{_fmt({k: total.get(k, 0.0) for k in wanted})} in total (short: {_fmt(short)}). "
            "Add nodes, lower train.num_workers / sweep.max_concurrent_trials / replicas, "
            "or run without RAY_ADDRESS on a local Ray (which raises its logical CPUs to fit)"
        )
    for bundle in need.bundles if nodes else ():
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v) for node in nodes):
            raise UserError(
                f"Ray cannot run {need.what}: no single node has {_fmt(bundle)} "
                f"(largest nodes: {'; '.join(_fmt(n) for n in nodes[:4])})"
            )


def local_cpus(need: Need | None, min_cpus: float = 0) -> int:
    """Logical CPUs for a local Ray: the machine's cores, raised to what ``need`` holds."""
    wanted = max(min_cpus, need.total().get("CPU", 0.0) if need else 0.0)
    return max(os.cpu_count() or 1, math.ceil(wanted))


def training_need(train: TrainConfig, *, data_tasks: int = 1) -> Need:
    """Train workers (``train.resources_per_worker`` each, default 1 CPU [+ 1 GPU]) plus the
    Ray Data tasks that stream their data (one at a time suffices, 1 CPU)."""
    per_worker = train.resources_per_worker or ({"CPU": 1, "GPU": 1} if train.use_gpu else {"CPU": 1})
    return Need(
        f"{train.num_workers} Train worker(s) ({_fmt(per_worker)} each) + {data_tasks} Ray Data task(s) feeding them",
        tuple([dict(per_worker)] * train.num_workers + [{"CPU": 1}] * data_tasks),
    )


def data_need(data: DataConfig, *, scores_reference: bool = True) -> Need:
    """The data pipeline: reference-scoring actors (when scoring) plus one task feeding them.

    ``scores_reference=False`` (``Config.scores_reference``: a reference-free loss) needs no
    actors even with ``data.precompute_ref_logps``.
    """
    if not (data.precompute_ref_logps and scores_reference):
        return Need("the data pipeline (1 Ray Data task)", ({"CPU": 1},))
    actor = {"CPU": 1, "GPU": data.ref_gpus_per_actor}
    return Need(
        f"{data.ref_num_actors} reference-scoring actor(s) + 1 Ray Data task",
        tuple([actor] * data.ref_num_actors + [{"CPU": 1}]),
    )


def eval_need(eval_cfg: EvalConfig) -> Need:
    """Serve replicas of one evaluation: the policy, plus a local judge when one is served
    (the generation requests are Ray Data tasks with ``num_cpus=0``)."""
    replica = {"CPU": eval_cfg.num_cpus, "GPU": eval_cfg.num_gpus}
    count = 2 if (eval_cfg.judge_model and not eval_cfg.judge_url) else 1
    return Need(f"{count} Serve replica(s) ({_fmt(replica)} each)", tuple([replica] * count))


def serve_need(replicas: int, num_cpus: float, num_gpus: float) -> Need:
    replica = {"CPU": num_cpus, "GPU": num_gpus}
    return Need(f"{replicas} Serve replica(s) ({_fmt(replica)} each)", tuple([replica] * replicas))


def init_ray(
    *, dashboard: bool = True, quiet: bool = False, min_cpus: float = 0, need: Need | None = None
) -> str:
    """Initialise Ray once per process, fit or refuse ``need``, and say where it runs.

    The dashboard stays on by default: Ray 2.60's Train V2 watches its controller through
    the State API the dashboard serves. Without it, that watcher can declare a live run
    dead under load and remove its placement group, killing the workers (seen here); it
    also cleans up the placement groups of Train runs that Tune stops early. ``min_cpus``
    and ``need`` raise a local cluster's *logical* CPU count so that every actor and task
    of one unit of work can be scheduled at once (threads are still bounded by
    ``torch_threads``). Returns ``"local"``, ``"existing"`` or the ``RAY_ADDRESS``.
    Raises :class:`UserError` when the (local or joined) cluster cannot hold ``need``.
    """
    import ray

    from rayalign import console

    if ray.is_initialized():
        where = "existing"
    else:
        console.mute_ray()  # `import ray` added its console handler; ray.init would use it
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=not quiet, configure_logging=not console.quiet())
            where = address
        else:
            ray.init(address="local", num_cpus=local_cpus(need, min_cpus), include_dashboard=dashboard,
                     log_to_driver=not quiet, configure_logging=False)
            where = "local"
        # A CLI command's quiet console: Ray's lines and forwarded worker output to the log file.
        console.mute_ray()
        console.route_worker_output()
    if need is not None and not os.environ.get("RAYALIGN_SKIP_RESOURCE_CHECK"):
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        check_fit(need, ray.cluster_resources(), nodes)
    return where
