"""A bounded queue drained by one background thread: the only way events leave.

The caller's side is a length check and a `deque.append`; everything else,
building, serialising and HTTP, happens on the worker. The worker starts on
first use and again in every forked child, and process exit waits for it at
most the shutdown timeout.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from .delivery import Sink, forget_thread, silence_current_thread
from .events import EventBuilder, Record

BATCH_SIZE = 250  # about 150 KB of JSON: well under PostHog's limits, few round trips
MAX_ATTEMPTS_PER_BATCH = 3


class _Marker:
    """A flush request travelling through the queue behind the records it waits for."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class Emitter:
    """Owns the queue and the worker thread of one `Telemetry` instance."""

    def __init__(
        self,
        make_builder: Callable[[], EventBuilder],
        make_sink: Callable[[], Sink],
        *,
        hand_off: Callable[[EventBuilder, list[Record]], bool] | None = None,
        max_queue_size: int = 10_000,
        flush_interval: float = 1.0,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self._make_builder = make_builder
        self._make_sink = make_sink
        self._hand_off = hand_off
        self._max = max(1, int(max_queue_size))
        self._interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.dropped = 0
        self.sent = 0
        self._atexit_registered = False
        self._reset()
        ref = weakref.ref(self)

        def after_fork_in_child() -> None:
            emitter = ref()
            if emitter is not None:
                emitter._reset()

        os.register_at_fork(after_in_child=after_fork_in_child)

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent keeps its events)."""
        # One deque for the emitter's life (emptied in a forked child): `fast_lane` hands it out.
        queue: deque[Record | _Marker] | None = getattr(self, "_queue", None)
        if queue is None:
            queue = deque()
        queue.clear()
        self._queue: deque[Record | _Marker] = queue
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._take_lock = threading.Lock()  # the worker taking records vs. an exit hand-off
        self._builder_lock = threading.Lock()
        self._builder: EventBuilder | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._closed = False
        self.accepting = False  # started and not closed: what `fast_lane` users check
        self._stopping = False
        self.dropped = 0
        self.sent = 0
        self.sink: Sink | None = None

    # -- the caller's side: no I/O, no locks on the common path, never raises --

    def put(self, record: Record) -> None:
        queue = self._queue
        size = len(queue)
        if size >= self._max or self._closed:
            self.dropped += 1
            return
        queue.append(record)
        if not self._started:
            self._start()
        elif size == BATCH_SIZE:
            self._wake.set()

    def fast_lane(self) -> tuple[deque[Record | _Marker], int]:
        """The queue and the length below which a caller may append to it directly.

        For hot paths that inline `put`: while `accepting` is true and the queue is shorter
        than that length, `queue.append(record)` is exactly what `put` would do; otherwise
        call `put`, which starts the worker, wakes it for a full batch, or counts a drop.
        """
        return self._queue, min(BATCH_SIZE, self._max)

    def _close(self) -> None:
        """Accept nothing more, on the slow path (`put`) and on the fast lane alike."""
        self._closed = True
        self.accepting = False

    def put_first(self, record: Record) -> None:
        """Queue ahead of everything else (the `new_installation` event)."""
        self._queue.appendleft(record)

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
            try:
                thread = threading.Thread(
                    target=self._run, name="telemetry-middleware", daemon=True
                )
                thread.start()
                self._thread = thread
                self.accepting = True
            except Exception:  # e.g. interpreter shutting down: give up quietly
                self._close()
                return
            if not self._atexit_registered:
                self._atexit_registered = True
                ref = weakref.ref(self)

                def at_exit() -> None:
                    emitter = ref()
                    if emitter is not None:
                        emitter.shutdown(emitter.shutdown_timeout, at_exit=True)

                atexit.register(at_exit)

    # -- control --

    @property
    def pending(self) -> int:
        return sum(1 for item in self._queue if not isinstance(item, _Marker))

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until everything queued before this call was handled; True if it was."""
        if not self._started or self._thread is None or not self._thread.is_alive():
            return not self._queue
        marker = _Marker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(max(0.0, timeout))

    def shutdown(self, timeout: float = 1.0, *, at_exit: bool = False) -> None:
        """Stop accepting events and give pending ones at most `timeout` seconds.

        At interpreter exit, when records are pending but the sender is not ready
        yet (a short CLI run ends before the SDK finished importing), the records
        are handed to `hand_off`, which delivers them without holding the exit.
        """
        if self._closed:
            return
        self._close()
        self._stopping = True
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        deadline = time.monotonic() + max(0.0, timeout)
        if at_exit and self._hand_off is not None and self._try_hand_off(timeout):
            self._wake.set()
            return
        self._wake.set()
        thread.join(max(0.0, deadline - time.monotonic()))

    def _try_hand_off(self, timeout: float) -> bool:
        """Hand pending records over; False (nothing done) when that would take too long."""
        if not self._take_lock.acquire(timeout=timeout):
            return False
        try:
            sink = self.sink
            if sink is not None and sink.ready:
                return False
            if not self._queue:
                return False
            try:
                # The worker may be stuck building it (a hung home directory): never wait
                # past the shutdown timeout for that.
                builder = self._get_builder(timeout)
                if builder is None:
                    return False
                # Building may have queued new_installation: snapshot the records after.
                records = [r for r in self._queue if not isinstance(r, _Marker)]
                assert self._hand_off is not None
                if not self._hand_off(builder, records):
                    return False
            except Exception:
                return False
            self._close()
            self.sent += self._clear()  # the records are in other hands now
            return True
        finally:
            self._take_lock.release()

    def _get_builder(self, timeout: float = -1) -> EventBuilder | None:
        """Made once, by whichever of the worker or an exit hand-off needs it first.

        None when the lock could not be had within `timeout` (negative: no limit).
        """
        if not self._builder_lock.acquire(timeout=timeout):
            return None
        try:
            if self._builder is None:
                self._builder = self._make_builder()
            return self._builder
        finally:
            self._builder_lock.release()

    # -- the worker --

    def _run(self) -> None:
        silence_current_thread()
        try:
            builder = self._get_builder()
            assert builder is not None  # no timeout: always made
            sink = self._make_sink()
            self.sink = sink
            sink.prepare()
        except Exception:
            self._give_up()
            return
        try:
            self._loop(builder, sink)
        except Exception:
            self._give_up()
        finally:
            sink.close()
            forget_thread(threading.get_ident())

    def _loop(self, builder: EventBuilder, sink: Sink) -> None:
        batch: list[Record] = []
        markers: list[_Marker] = []
        attempts = 0
        while True:
            if not self._stopping:
                self._wake.wait(self._wait_time(sink, batch))
                self._wake.clear()
            if sink.dead:
                self._give_up()
                return
            if batch and not self._stopping and time.monotonic() < sink.retry_after:
                continue
            while True:
                if not batch:
                    with self._take_lock:
                        batch, markers = self._take()
                    attempts = 0
                if not batch:
                    self._release(markers)
                    markers = []
                    break
                if sink.send(builder.build(batch)):
                    self.sent += len(batch)
                else:
                    attempts += 1
                    if sink.dead or attempts < MAX_ATTEMPTS_PER_BATCH:
                        break  # back off, keep the batch and its markers
                    self.dropped += len(batch)
                batch = []
                self._release(markers)
                markers = []
                if self._stopping and sink.retry_after > time.monotonic():
                    break
            if self._stopping and (not self._queue or sink.dead or batch):
                self.dropped += len(batch)
                self._release(markers)
                return

    def _wait_time(self, sink: Sink, batch: list[Record]) -> float:
        if batch:
            return max(0.01, sink.retry_after - time.monotonic())
        return self._interval

    def _take(self) -> tuple[list[Record], list[_Marker]]:
        """Up to one batch of records, plus the flush markers met on the way."""
        records: list[Record] = []
        markers: list[_Marker] = []
        queue = self._queue
        while queue and len(records) < BATCH_SIZE:
            item = queue.popleft()
            if isinstance(item, _Marker):
                markers.append(item)
                if records:
                    break  # release it right after the records before it are sent
            else:
                records.append(item)
        return records, markers

    @staticmethod
    def _release(markers: list[_Marker]) -> None:
        for marker in markers:
            marker.done.set()

    def _give_up(self) -> None:
        """Stop for the rest of the process: drop what is queued and accept nothing more."""
        self._close()
        self.dropped += self._clear()

    def _clear(self) -> int:
        """Empty the queue, releasing flush waiters; the number of records removed."""
        removed = 0
        queue = self._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, _Marker):
                item.done.set()
            else:
                removed += 1
        return removed
