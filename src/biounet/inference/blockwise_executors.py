"""Where `predict_blockwise` runs its tasks: dask's local scheduler or a dask.distributed cluster.

Both executors offer one call, ``map(function, shared, arguments, *, name, on_result)``:
`shared` goes to the workers once instead of with every task, and `on_result` hears
of each result as it arrives, so finished blocks are recorded while the run goes on.
A task lost with a killed worker is rerun by dask.distributed itself, not by code here.
"""

from __future__ import annotations

import uuid

from biounet.inference.blockwise_source import _first_line, _OpenedSource


class _LocalExecutor:
    """dask's local scheduler: a graph of one task per call, results reported by callback."""

    is_distributed = False

    def __init__(self, scheduler: str) -> None:
        self.scheduler = scheduler

    def map(self, function, shared, arguments, *, name: str, on_result=None) -> list:
        """Return ``[function(shared, *args) for args in arguments]``, computed by dask."""
        import dask
        from dask.callbacks import Callback

        token = uuid.uuid4().hex
        common = dask.delayed(shared, name=f"{name}-shared-{token}", traverse=False)
        tasks = [
            dask.delayed(function, pure=False)(common, *args, dask_key_name=f"{name}-{token}-{n}")
            for n, args in enumerate(arguments)
        ]
        keys = {task.key for task in tasks}

        def posttask(key, result, dsk, state, worker_id) -> None:
            if key in keys and on_result is not None:
                on_result(result)

        with Callback(posttask=posttask):
            return list(
                dask.compute(*tasks, scheduler=self.scheduler, num_workers=self.parallelism)
            )

    @property
    def parallelism(self) -> int:
        """Tasks run at once: one block at a time unless dask's `num_workers` is set, as
        torch already spreads one block over every core."""
        import dask

        return int(dask.config.get("num_workers", None) or 1)

    def close(self) -> None:
        pass


class _DistributedExecutor:
    """A dask.distributed client: one submitted task per call, reported as each finishes."""

    is_distributed = True

    def __init__(self, client, *, owns_client: bool) -> None:
        self.client, self.owns_client = client, owns_client

    def map(self, function, shared, arguments, *, name: str, on_result=None) -> list:
        """Return ``[function(shared, *args) for args in arguments]``, computed on the cluster."""
        from distributed import as_completed

        token = uuid.uuid4().hex
        # sent to every worker once, instead of travelling with every task
        common = self.client.scatter(shared, broadcast=True, hash=False)
        futures = [
            self.client.submit(function, common, *args, key=f"{name}-{token}-{n}", pure=False)
            for n, args in enumerate(arguments)
        ]
        position = {future.key: number for number, future in enumerate(futures)}
        results: list = [None] * len(futures)
        try:
            for future in as_completed(futures):
                results[position[future.key]] = result = future.result()
                if on_result is not None:
                    on_result(result)
        except BaseException:
            self.client.cancel(futures)
            raise
        return results

    @property
    def parallelism(self) -> int:
        """Tasks the cluster runs at once: its workers' threads, now."""
        return max(sum(self.client.nthreads().values()), 1)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


def _make_executor(scheduler):
    if scheduler is None or scheduler == "threads":
        return _LocalExecutor("threads")
    if scheduler in ("synchronous", "sync"):
        return _LocalExecutor("synchronous")
    is_address = isinstance(scheduler, str) and "://" in scheduler
    is_client = type(scheduler).__module__.split(".")[0] == "distributed"
    if is_address or is_client:
        try:
            import distributed
        except ImportError:
            raise ImportError(
                f"scheduler {scheduler!r} needs the dask.distributed package (distributed)"
            ) from None
        if is_client:
            return _DistributedExecutor(scheduler, owns_client=False)
        return _DistributedExecutor(_connect(distributed, scheduler), owns_client=True)
    raise ValueError(
        "scheduler must be None, 'threads', 'synchronous', a dask.distributed Client or a "
        f"scheduler address such as 'tcp://127.0.0.1:8786', got {scheduler!r}"
    )


def _connect(distributed, address: str):
    """Return a Client of the scheduler at `address`, or say in one line why there is none."""
    try:
        # waits up to the dask config's distributed.comm.timeouts.connect (30 s by default)
        return distributed.Client(address)
    except ValueError as error:  # unknown scheme, port that is not a number, ...
        raise ValueError(
            f"scheduler {address!r} is not a valid address ({_first_line(error)}); expected "
            "such as 'tcp://127.0.0.1:8786'"
        ) from None
    except OSError as error:  # refused, unknown host or timed out
        raise ConnectionError(
            f"scheduler {address} cannot be reached ({_first_line(error)}); start one with "
            f"`dask scheduler` and workers with `dask worker {address}`, or check the address"
        ) from None


def _check_shareable(opened: _OpenedSource, target) -> None:
    """Refuse arrays that worker processes cannot reach."""
    import pickle

    from zarr.storage import MemoryStore

    if isinstance(getattr(target, "store", None), MemoryStore):
        raise ValueError(
            "target is a zarr array in memory, which distributed workers cannot write to; "
            "pass a path"
        )
    if opened.path is None:
        try:
            pickle.dumps(opened.array)
        except Exception as error:
            raise TypeError(
                f"source cannot be sent to distributed workers ({error}); pass its path instead"
            ) from None
