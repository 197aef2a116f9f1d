"""A job queue that is fair across clients: one job per client in turn (round-robin), so an artist who
queues twenty clicks cannot starve another who queues one."""

from __future__ import annotations

import collections
import threading

from engine.service.server import Job


class QueueFull(Exception):
    pass


class FairQueue:
    def __init__(self, max_per_client: int = 32) -> None:
        self.cond = threading.Condition()
        self.max_per_client = max_per_client
        self._queues: collections.OrderedDict[str, collections.deque[Job]] = collections.OrderedDict()
        self.current: Job | None = None  # taken and not finished: set in the same step as the take, so a
        # job is always either queued or current until finish() (a `fetch` never finds it in between)

    def put(self, client: str, job: Job) -> None:
        with self.cond:
            queue = self._queues.setdefault(client, collections.deque())
            if len(queue) >= self.max_per_client:
                raise QueueFull(f"{len(queue)} of your jobs are already waiting; wait for results before sending more")
            queue.append(job)
            self.cond.notify_all()

    def take(self, timeout: float) -> tuple[str, Job] | None:
        """The next job: the head of the client first in turn, who then goes to the back of the line."""
        with self.cond:
            if not self._queues:
                self.cond.wait(timeout)
            if not self._queues:
                return None
            client, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            if queue:
                self._queues.move_to_end(client)
            else:
                del self._queues[client]
            self.current = job
            return client, job

    def finish(self) -> None:
        """The current job's result is stored: it is no longer the queue's business."""
        with self.cond:
            self.current = None

    def remove(self, client: str, job_id: str) -> Job | None:
        with self.cond:
            queue = self._queues.get(client, collections.deque())
            for job in queue:
                if job.id == job_id:
                    queue.remove(job)
                    if not queue:
                        del self._queues[client]
                    return job
        return None

    def find(self, client: str, job_id: str) -> Job | None:
        with self.cond:
            return next((j for j in self._queues.get(client, ()) if j.id == job_id), None)

    def __len__(self) -> int:
        with self.cond:
            return sum(len(q) for q in self._queues.values())

    def waiting(self, client: str) -> int:
        with self.cond:
            return len(self._queues.get(client, ()))
