"""Start or join Ray for a CLI command: the cluster named by ``RAY_ADDRESS``, else a local one.

Under a CLI command's quiet console (:mod:`rayalign.console`) Ray's own log lines and the
output it forwards from workers go to the run's log file instead of the console."""

from __future__ import annotations

import os


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that sets torch's intra-op threads in a Ray worker (Ray otherwise sets
    ``OMP_NUM_THREADS`` to the worker's CPU reservation)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def init_ray(*, dashboard: bool = True, quiet: bool = False, min_cpus: float = 0) -> str:
    """Initialise Ray once per process and say where it runs.

    The dashboard stays on by default: Ray 2.60's Train V2 watches its controller through
    the State API the dashboard serves. Without it, that watcher can declare a live run
    dead under load and remove its placement group, killing the workers (seen here); it
    also cleans up the placement groups of Train runs that Tune stops early. ``min_cpus`` raises a local
    cluster's *logical* CPU count so that every actor and task of one unit of work can be
    scheduled at once (threads are still bounded by ``torch_threads``).
    """
    import ray

    from rayalign import console

    if ray.is_initialized():
        return "existing"
    console.mute_ray()  # `import ray` added its console handler; ray.init would use it
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=not quiet, configure_logging=not console.quiet())
        where = address
    else:
        num_cpus = max(os.cpu_count() or 1, int(-(-min_cpus // 1)))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                 log_to_driver=not quiet, configure_logging=False)
        where = "local"
    # A CLI command's quiet console: Ray's lines and forwarded worker output to the log file.
    console.mute_ray()
    console.route_worker_output()
    return where
