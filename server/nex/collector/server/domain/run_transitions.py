"""A run's state machine, as one table.

Every status a run takes is written by a guarded UPDATE that the repositories
build from one of these transitions (`db/repositories/runs.py: move`): the
UPDATE only touches runs in the transition's source status, so a change this
table does not list cannot be written, and two writers racing on one run
cannot both win.

    QUEUED --claim / submit--> RUNNING --complete--> COMPLETED
       |                        |  |  --fail------> FAILED
       |                        |  +--cancel------> CANCELLED
       |                        +--retry (attempt + 1)--+
       |   <--release (stopping, throttled, no budget, worker lost, job failed)
       +--cancel--> CANCELLED

COMPLETED, FAILED and CANCELLED are final.
"""

from __future__ import annotations

from dataclasses import dataclass

from nex.collector.server.domain.runs import RunStatus


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    source: RunStatus
    target: RunStatus


CLAIM = Transition("claim", RunStatus.QUEUED, RunStatus.RUNNING)  # by a worker, attempt + 1
SUBMIT = Transition("submit", RunStatus.QUEUED, RunStatus.RUNNING)  # in a provider job
RETRY = Transition("retry", RunStatus.RUNNING, RunStatus.RUNNING)  # a failed call, attempt + 1
RELEASE = Transition("release", RunStatus.RUNNING, RunStatus.QUEUED)
COMPLETE = Transition("complete", RunStatus.RUNNING, RunStatus.COMPLETED)
FAIL = Transition("fail", RunStatus.RUNNING, RunStatus.FAILED)
CANCEL_RUNNING = Transition("cancel running", RunStatus.RUNNING, RunStatus.CANCELLED)
CANCEL_QUEUED = Transition("cancel queued", RunStatus.QUEUED, RunStatus.CANCELLED)

TRANSITIONS: tuple[Transition, ...] = (
    CLAIM,
    SUBMIT,
    RETRY,
    RELEASE,
    COMPLETE,
    FAIL,
    CANCEL_RUNNING,
    CANCEL_QUEUED,
)


class IllegalTransition(ValueError):
    pass


def ending(status: RunStatus) -> Transition:
    """The transition that ends a running run in `status` (completed, failed or
    cancelled); IllegalTransition for any other status."""
    for t in (COMPLETE, FAIL, CANCEL_RUNNING):
        if t.target is status:
            return t
    raise IllegalTransition(f"a running run cannot end {status.value}")
