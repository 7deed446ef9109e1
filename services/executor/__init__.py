"""The executor service: runs the tasks of the task topics its labels satisfy.

* :mod:`.service` - :class:`~.service.Executor`: subscription, consume loop, offsets,
  heartbeats, batched completion events, graceful shutdown;
* :mod:`.subscription` - which task topics a label set satisfies (pure);
* :mod:`.worker_pool` - the worker processes, timeouts and dead workers;
* :mod:`.task_runner` - what runs inside a worker: code cache, inputs, outputs and logs;
* :mod:`.batcher` - grouping sends that happen together;
* ``python -m services.executor`` - the command line (:mod:`.__main__`).
"""
