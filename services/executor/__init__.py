"""The executor service: runs the tasks of the task topics its labels satisfy.

* :mod:`.service` - :class:`~.service.Executor`: wiring, lifecycle, graceful shutdown (its
  docstring is the overview);
* :mod:`.intake` - the fetch loop, the backlog and partition backpressure;
* :mod:`.inflight` - the started messages and the room for more;
* :mod:`.offsets` - how far each partition may be committed; the rebalance listener;
* :mod:`.handler` - one message: decode, claim, run, report; :mod:`.chunks` - chunk messages;
* :mod:`.leases` - claims, the leases held here and their renewal;
* :mod:`.reporter` - recording and publishing results, dead letters;
* :mod:`.tasklog` - the log lines about one task message;
* :mod:`.chains` - continuing a chain here (the planner and the loop);
* :mod:`.subscription` - which task topics a label set satisfies, and resubscribing;
* :mod:`.heartbeat` - the executor's entry in the registry;
* :mod:`.worker_pool` - the worker processes, timeouts and dead workers;
  :mod:`.worker_process` - starting one (scrubbed environment, unprivileged user,
  :mod:`.privileges`); :mod:`.worker_wire` - what crosses its socket (never a pickle back);
* :mod:`.task_data` - the executor's side of a task: code, inputs, outputs and logs (workers
  hold no credentials); :mod:`.task_runner` - what runs inside a worker;
* :mod:`.batcher`, :mod:`.fairness`, :mod:`.results`, :mod:`.retries` - batching sends,
  fair order, packing results, waiting out outages;
* ``python -m services.executor`` - the command line (:mod:`.__main__`).
"""
