"""A bot runner for API tests: it records every call it is given instead of running it.

It keeps the :class:`~flow.bot.contract.CallRunner` contract (capacity, ``AtCapacity``,
``stop`` answering whether it held the call) so the API's handling of each can be seen.
"""

from __future__ import annotations

from flow.bot.contract import AtCapacity, CallRequest


class RecordingRunner:
    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self.submitted: list[CallRequest] = []
        self.running: set[str] = set()
        self.stopped: list[str] = []
        # Refuse the next submit even though has_capacity() said yes (a race with
        # another join), with this Retry-After.
        self.refuse_next_submit: int | None = None
        self.shut_down = False

    def has_capacity(self) -> bool:
        return len(self.running) < self.capacity

    async def submit(self, call: CallRequest) -> None:
        if self.refuse_next_submit is not None:
            retry_after, self.refuse_next_submit = self.refuse_next_submit, None
            raise AtCapacity(retry_after)
        if not self.has_capacity():
            raise AtCapacity(1)
        self.submitted.append(call)
        self.running.add(call.workflow_thread_id)

    async def stop(self, workflow_thread_id: str) -> bool:
        if workflow_thread_id not in self.running:
            return False
        self.running.discard(workflow_thread_id)
        self.stopped.append(workflow_thread_id)
        return True

    async def shutdown(self) -> None:
        self.shut_down = True
