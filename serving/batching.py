"""A micro-batcher: concurrent requests share one model call, each keeping its own answer and errors.

Requests that arrive while a batch is running wait in a queue and go together into the next one; a
lone request never waits for company. Decoding and validation happen per request before `submit`,
so one bad image never fails the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np


class MicroBatcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int = 32):
        self.run, self.max_batch = run, max_batch
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batch_sizes: dict[int, int] = {}  # size -> how many batches had it, for /info and benchmarks

    async def submit(self, item: np.ndarray) -> np.ndarray:
        """One input row in, its output row back."""
        if self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        return await future

    async def _serve(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [(item, future) for item, future in batch if not future.done()]  # clients that left
            if not batch:
                continue
            self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
            try:
                outputs = await asyncio.to_thread(self.run, np.stack([item for item, _ in batch]))
            except Exception as error:  # a model failure reaches every request of the batch
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), output in zip(batch, outputs):
                if not future.done():
                    future.set_result(output)
