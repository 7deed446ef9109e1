"""Names of topics, Redis keys and object keys: deterministic, derived from one prefix.

Keys of task outputs and logs are derived from (namespace, graph, invocation, task, attempt),
so a re-run of a task writes the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from indexify.engine import in_generation


@dataclass(frozen=True)
class Names:
    prefix: str

    # -- Kafka topics ----------------------------------------------------------------------

    @property
    def events_topic(self) -> str:
        """Everything the scheduler consumes, keyed by invocation id."""
        return f"{self.prefix}.events"

    @property
    def deadletter_topic(self) -> str:
        """Messages that could not be processed, with the reason and the original bytes."""
        return f"{self.prefix}.deadletter"

    def deadletter_object(self, topic: str, partition: int, offset: int, part: str) -> str:
        """Where a dead letter too big for Kafka keeps ``part`` (``value``, ``key`` or
        ``headers``) of the message at ``topic``/``partition``/``offset``."""
        return f"{self.prefix}/deadletters/{topic}/{partition}/{offset}/{part}"

    def task_topic(self, placement_key: str, namespace: str, graph: str, function: str) -> str:
        return f"{self.prefix}.tasks.{placement_key}.{namespace}.{graph}.{function}"

    @property
    def task_topic_prefix(self) -> str:
        return f"{self.prefix}.tasks."

    # -- Redis keys ------------------------------------------------------------------------

    @property
    def namespaces_key(self) -> str:
        return f"{self.prefix}:namespaces"

    def graphs_key(self, namespace: str) -> str:
        """Hash: graph name -> JSON GraphRecord (the current version)."""
        return f"{self.prefix}:ns:{namespace}:graphs"

    def graph_versions_key(self, namespace: str, graph: str) -> str:
        """Hash: version -> JSON GraphDefinition (every version ever registered)."""
        return f"{self.prefix}:ns:{namespace}:graph:{graph}:versions"

    def invocations_key(self, namespace: str, graph: str) -> str:
        """Sorted set of invocation ids by creation time."""
        return f"{self.prefix}:ns:{namespace}:graph:{graph}:invocations"

    @property
    def graphs_epoch_key(self) -> str:
        """Incremented on every registration/deletion: executors watch it to resubscribe."""
        return f"{self.prefix}:graphs:epoch"

    def invocation_key(self, invocation_id: str) -> str:
        """Hash with fields ``state`` (the JSON summary of the InvocationState: no task
        records, no outputs), ``rev`` and ``status``."""
        return f"{self.prefix}:inv:{invocation_id}"

    def tasks_key(self, invocation_id: str) -> str:
        """Hash: task id -> JSON TaskRecord (one field per task, written by the scheduler)."""
        return f"{self.prefix}:inv:{invocation_id}:tasks"

    def output_index_key(self, invocation_id: str, function: str, generation: int = 0) -> str:
        """List of JSON ValueRange: the accepted outputs of ``function`` in computation
        ``generation`` of the invocation, in order."""
        return in_generation(f"{self.prefix}:inv:{invocation_id}:index:{function}", generation)

    def reducer_queue_key(self, invocation_id: str, function: str, generation: int = 0) -> str:
        """List of JSON ValueRange: values waiting for reducer ``function`` (in computation
        ``generation``)."""
        return in_generation(f"{self.prefix}:inv:{invocation_id}:queue:{function}", generation)

    def outputs_key(self, invocation_id: str) -> str:
        """Hash: task id (or 'input') -> JSON StoredValues."""
        return f"{self.prefix}:inv:{invocation_id}:outputs"

    def done_key(self, invocation_id: str) -> str:
        """Set of task ids whose completion the scheduler recorded (executors skip them)."""
        return f"{self.prefix}:inv:{invocation_id}:done"

    def results_key(self, invocation_id: str) -> str:
        """Hash: task id -> JSON TaskFinishedEvent of a success an executor recorded before
        publishing it (a redelivered task re-publishes it instead of running again); the
        scheduler removes the entry when it records the task done."""
        return f"{self.prefix}:inv:{invocation_id}:results"

    def running_key(self, invocation_id: str) -> str:
        """Hash: task id -> JSON ``task.started`` ProgressEvent (executor, attempt, time) of
        the tasks executors started and have not recorded yet; an entry counts only while
        the task's lease lives (the status reads it, ``lua/task_activity.lua``)."""
        return f"{self.prefix}:inv:{invocation_id}:running"

    def lease_key(self, invocation_id: str, task_id: str) -> str:
        """String with a TTL: the token of the executor process running the task."""
        return self.lease_prefix(invocation_id) + task_id

    def lease_prefix(self, invocation_id: str) -> str:
        """What the lease keys of an invocation's tasks start with (Lua scripts append the
        task id)."""
        return f"{self.prefix}:inv:{invocation_id}:lease:"

    def logs_key(self, invocation_id: str) -> str:
        """Hash: task id -> JSON TaskLogPointers."""
        return f"{self.prefix}:inv:{invocation_id}:logs"

    def progress_channel(self, invocation_id: str) -> str:
        """Redis pub/sub channel of progress events (for SSE)."""
        return f"{self.prefix}:progress:{invocation_id}"

    @property
    def finished_channel(self) -> str:
        """Redis pub/sub channel of the ids of invocations that ended or were deleted
        (for long polls: one subscription per API process)."""
        return f"{self.prefix}:finished"

    @property
    def task_hints_channel(self) -> str:
        """Redis pub/sub channel of task hints: copies of first task messages, for a head
        start on their Kafka copies (:mod:`services.common.task_hints`)."""
        return f"{self.prefix}:task-hints"

    def replay_key(self, replay_id: str) -> str:
        """Hash of one replay (backfill): ``record`` (JSON Replay), ``cursor`` (invocations
        requested so far), ``done``, ``failed``, ``cancelled``."""
        return f"{self.prefix}:replay:{replay_id}"

    def replay_ids_key(self, replay_id: str) -> str:
        """List: the invocation ids a replay covers (fixed when it is created)."""
        return f"{self.prefix}:replay:{replay_id}:ids"

    def replay_inflight_key(self, replay_id: str) -> str:
        """Hash: invocation id -> the generation a replay requested for it, not ended yet."""
        return f"{self.prefix}:replay:{replay_id}:inflight"

    def replay_lease_key(self, replay_id: str) -> str:
        """String with a TTL: the scheduler process driving the replay."""
        return f"{self.prefix}:replay:{replay_id}:lease"

    @property
    def active_replays_key(self) -> str:
        """Set of the ids of replays still running (what schedulers drive)."""
        return f"{self.prefix}:replays:active"

    def graph_replays_key(self, namespace: str, graph: str) -> str:
        """Sorted set of a graph's replay ids by creation time."""
        return f"{self.prefix}:replays:{namespace}:{graph}"

    @property
    def delayed_key(self) -> str:
        """Sorted set of delayed task messages (retries with backoff), scored by due time."""
        return f"{self.prefix}:delayed"

    @property
    def handled_deadletters_key(self) -> str:
        """Hash: ``<partition>:<offset>`` of a dead letter -> JSON ``{at, note}``: those an
        operator marked handled (``indexify-cli deadletters --mark-handled``)."""
        return f"{self.prefix}:deadletters:handled"

    @property
    def executors_key(self) -> str:
        """Hash: executor id -> JSON ExecutorInfo (labels, heartbeat)."""
        return f"{self.prefix}:executors"

    # -- object keys -----------------------------------------------------------------------

    def code_object(self, namespace: str, graph: str, version: str) -> str:
        return f"{self.prefix}/graphs/{namespace}/{graph}/{version}/code.pkl"

    def invocation_prefix(self, namespace: str, graph: str, invocation_id: str) -> str:
        return f"{self.prefix}/invocations/{namespace}/{graph}/{invocation_id}/"

    def input_object(self, namespace: str, graph: str, invocation_id: str) -> str:
        return self.invocation_prefix(namespace, graph, invocation_id) + "input"

    def outputs_object(self, namespace: str, graph: str, invocation_id: str, task_id: str) -> str:
        return self.invocation_prefix(namespace, graph, invocation_id) + f"tasks/{task_id}/outputs"

    def log_object(
        self,
        namespace: str,
        graph: str,
        invocation_id: str,
        task_id: str,
        attempt: int,
        stream: str,
    ) -> str:
        base = self.invocation_prefix(namespace, graph, invocation_id)
        return base + f"tasks/{task_id}/{attempt}/{stream}"
