"""``Batch``: the batching option of a function (``@indexify_function(batch=Batch(...))``).

A batched function is written over lists: it receives ``list[T]`` (the inputs of several
tasks: elements of one fan-out and tasks of different invocations alike) and returns
``list[R]`` of the same length, in order; each result goes back to its own task. The
engine still sees one task per input: claims, outputs, retries and results stay per task,
only the call of the function is shared. A batch fails as a whole (the function raised, or
returned a list of the wrong length): every task of it fails with the error, and is
retried per ``retries=`` (the tasks of a batch are retried together).

Where the tasks come from:

* in-process (``create_client(in_process=True)``): the ready tasks of the function at that
  step of the run, in batches of up to ``max_size``;
* on the server: an executor collects the ready tasks of the function from its task topic
  until ``max_size`` of them are there or ``max_wait`` seconds passed since the first
  (whichever comes first), then runs them in one call on one worker. Batches never mix
  graph versions; each executor assembles its own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_BATCH_SIZE", "MAX_BATCH_WAIT_SEC", "Batch"]

#: The largest ``max_size``: a batch's inputs and outputs cross to one worker in one message.
MAX_BATCH_SIZE = 4096
#: The longest ``max_wait``: a task waits at most this long for others to join its batch.
MAX_BATCH_WAIT_SEC = 60.0


@dataclass(frozen=True)
class Batch:
    """Run up to ``max_size`` tasks of a function in one call, waiting at most ``max_wait``
    seconds for a batch to fill. Checked where it is used (the decorator names the function
    in its error), not here."""

    max_size: int
    max_wait: float = 0.05
