#!/usr/bin/env python3
"""A small DNO client of outage-relay's ``AlertFeed``, in Python with grpcio.

Library and command line in one file. It does what ``outage-relay dno-sink --subscribe`` does:

- ``subscribe``: calls ``AlertFeed.Subscribe``, hands every alert to a handler (the command
  line appends one JSON line per alert), and acknowledges cumulatively with ``AlertFeed.Ack``
  every ``--ack-every`` alerts and whenever the stream has been idle for 50 ms. An ack does
  not hold up reading: one ``Ack`` is under way at a time while alerts go on being received
  and handled (a relay whose cursor store is electing a leader may take seconds to answer),
  and once it is answered the next ack covers everything handled meanwhile. With
  ``--state FILE`` it keeps the last acknowledged sequence in FILE, saved (atomically) *before*
  each ack, and a restart resumes from the sequence after it. It reconnects with exponential
  backoff (100 ms to 10 s, jittered) after an error the relay may recover from (a failed ack
  included), resuming after the last alert handled, and drops an alert delivered again (same
  sequence). A refusal no retry can cure (wrong identity, another DNO's feed, unknown
  subscriber, a sequence the relay no longer has) ends it with exit status 1.
- ``watch-summaries``: calls ``AlertFeed.WatchSummaries`` and writes one JSON line per
  ``OutageSummary`` (the protobuf JSON mapping), reconnecting the same way.

Delivery is at least once: an alert is acknowledged only after the handler has returned for it
and every earlier one, its output has been flushed and the state saved. While an ack is under
way the handler is still flushed every ``--ack-every`` alerts and when the stream is idle, so
the output keeps up. A crash between handling an alert and saving the state hands that alert
to the handler again after the restart, with the same ``alert_id`` and ``sequence``.

The Python stubs are generated from the relay's ``proto/`` directory at start (into a
temporary directory, with grpcio-tools), so they always match the proto files next to the
client; ``--proto-dir`` points elsewhere.

TLS: ``--tls-ca`` (the CA the relay's certificate must chain to) turns it on and needs an
``https://`` target; ``--tls-cert``/``--tls-key`` present the DNO's client certificate, as the
relay's mutual TLS requires of subscribers; ``--tls-domain`` is the name the relay's
certificate carries when it is not the target's host.

Exit status: 0 after a clean stop (SIGTERM, SIGINT or ``--once-count``), 1 on a refusal or an
output error, 64 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import queue
import random
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Protocol, TextIO

import grpc
from google.protobuf import json_format

#: The proto directory of the repository this file lives in.
DEFAULT_PROTO_DIR = Path(__file__).resolve().parents[3] / "proto"
#: Pending alerts are acknowledged once the stream has been idle this long (seconds).
IDLE_ACK_AFTER = 0.05
#: First and largest reconnection delays (seconds).
MIN_BACKOFF = 0.1
MAX_BACKOFF = 10.0
#: How long a single ``Ack`` may take (seconds); also how long a session's end waits for the
#: ack under way and the last one.
ACK_TIMEOUT = 5.0
#: A summary of many areas can be large: accept messages up to this size (bytes).
MAX_RECEIVE_MESSAGE = 64 * 1024 * 1024
#: How often a waiting loop looks at its stop event (seconds).
POLL = 0.2
#: Exit status of a usage or configuration error, as the relay's own commands use.
EXIT_USAGE = 64
#: Status codes no retry can cure.
PERMANENT = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


class UsageError(Exception):
    """A bad flag, file or state: reported on stderr, exit status 64."""


@dataclass
class Protos:
    """The generated modules the client uses."""

    alerts: ModuleType
    alerts_grpc: ModuleType
    summaries: ModuleType


def load_protos(proto_dir: Path = DEFAULT_PROTO_DIR) -> Protos:
    """Generates the Python stubs of ``proto_dir`` into a temporary directory and imports them.

    The directory is removed again once the modules are imported: Python keeps them in memory.
    """
    from grpc_tools import protoc  # grpcio-tools; only needed here.

    sources = sorted(
        str(p.relative_to(proto_dir)) for p in proto_dir.glob("outage_relay/v1/*.proto")
    )
    if not sources:
        raise UsageError(f"no outage_relay/v1/*.proto under {proto_dir} (see --proto-dir)")
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="outage-relay-stubs-") as out:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_dir}",
                f"-I{well_known}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                *sources,
            ]
        )
        if status != 0:
            raise UsageError(f"protoc could not compile {proto_dir} (status {status})")
        sys.path.insert(0, out)
        try:
            return Protos(
                alerts=importlib.import_module("outage_relay.v1.alerts_pb2"),
                alerts_grpc=importlib.import_module("outage_relay.v1.alerts_pb2_grpc"),
                summaries=importlib.import_module("outage_relay.v1.summaries_pb2"),
            )
        finally:
            sys.path.remove(out)


@dataclass
class Tls:
    """PEM files for TLS: the CA that signs the relay's certificate, and the client's identity."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    domain: str | None = None


def open_channel(target: str, tls: Tls | None) -> grpc.Channel:
    """A channel to ``target`` (``http://host:port``, or ``https://host:port`` with ``tls``).

    grpcio connects lazily: an unreachable relay shows as ``UNAVAILABLE`` on the first call.
    """
    url = urllib.parse.urlsplit(target)
    if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
        raise UsageError(f"{target!r} is not http://HOST:PORT or https://HOST:PORT")
    if (url.scheme == "https") != (tls is not None):
        raise UsageError(
            "--tls-ca goes with an https:// target, and an https:// target needs --tls-ca"
        )
    address = url.netloc
    options = [("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE)]
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca),
        private_key=_read(tls.key) if tls.key else None,
        certificate_chain=_read(tls.cert) if tls.cert else None,
    )
    if tls.domain:
        options.append(("grpc.ssl_target_name_override", tls.domain))
    return grpc.secure_channel(address, credentials, options=options)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UsageError(f"reading {path}: {err.strerror}") from err


class StateFile:
    """The last acknowledged sequence of one subscriber, kept in a small JSON file.

    ``{"subscriber": "ukpn", "acked_sequence": 42}``, replaced atomically (a temporary file in
    the same directory, fsynced, then renamed over it), so a crash leaves the old or the new.
    """

    def __init__(self, path: Path, subscriber: str):
        self.path = path
        self.subscriber = subscriber

    def load(self) -> int:
        """The saved sequence, or 0 when there is no file yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        except OSError as err:
            raise UsageError(f"reading {self.path}: {err.strerror}") from err
        try:
            state = json.loads(text)
            subscriber, sequence = state["subscriber"], state["acked_sequence"]
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{self.path} is not a state file of this client") from err
        if subscriber != self.subscriber:
            raise UsageError(
                f"{self.path} belongs to subscriber {subscriber!r}, not {self.subscriber!r}"
            )
        if not isinstance(sequence, int) or sequence < 0:
            raise UsageError(f"{self.path}: acked_sequence must be a whole number")
        return sequence

    def save(self, sequence: int) -> None:
        """Replaces the file with ``sequence``, durably."""
        directory = self.path.parent
        text = json.dumps({"subscriber": self.subscriber, "acked_sequence": sequence})
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as file:
                file.write(text + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class AlertHandler(Protocol):
    """What a subscriber does with its alerts."""

    def handle(self, alert) -> None:
        """Processes one alert (an ``outage_relay.v1.Alert``); raising stops the client."""

    def flush(self) -> None:
        """Makes every handled alert durable; called before each acknowledgement."""


class JsonLines:
    """Writes one JSON object per alert or summary to a file (appended) or to stdout."""

    def __init__(self, output: Path | None):
        self._file: TextIO = output.open("a") if output else sys.stdout
        self._durable = output is not None

    def handle(self, alert) -> None:
        """Writes the alert's line, with the fields ``outage-relay dno-sink`` writes."""
        self.write(alert_line(alert))

    def write(self, record: dict) -> None:
        """Writes ``record`` as one line."""
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        """Flushes, and fsyncs a file."""
        self._file.flush()
        if self._durable:
            os.fsync(self._file.fileno())


def alert_line(alert) -> dict:
    """An alert as the JSON object ``dno-sink`` writes; unset timestamps are left out."""
    line = {
        "alert_id": alert.alert_id,
        "sequence": alert.sequence,
        "kind": _kind_name(alert),
        "device_id": alert.device_id,
        "phase": alert.phase,
        "mpan_core": alert.mpan_core,
        "distributor_id": alert.distributor_id,
        "gsp_group": alert.gsp_group,
    }
    for field in ("lost_at", "restored_at", "due_at", "deadline", "emitted_at"):
        if alert.HasField(field):
            line[field] = getattr(alert, field).ToJsonString()
    line.update(
        learned_late=alert.learned_late,
        outage_duration_ms=alert.outage_duration_ms,
        subscriber=alert.subscriber,
        received_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    return line


def _kind_name(alert) -> str:
    kinds = alert.DESCRIPTOR.fields_by_name["kind"].enum_type.values_by_number
    kind = kinds.get(alert.kind)
    return kind.name if kind else "ALERT_KIND_UNSPECIFIED"


class Backoff:
    """Exponential reconnection delays with full jitter, from ``MIN_BACKOFF`` to ``MAX_BACKOFF``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Starts again from the smallest delay (after a session that received something)."""
        self._ceiling = MIN_BACKOFF

    def next(self) -> float:
        """The next delay, in seconds."""
        delay = random.uniform(MIN_BACKOFF, self._ceiling)
        self._ceiling = min(self._ceiling * 2, MAX_BACKOFF)
        return delay


_END = object()
#: Put into a stream's queue when an ``Ack`` under way is answered, to wake the session.
_ACK_ANSWERED = object()


def _stream_queue() -> queue.Queue:
    """The queue between a stream's reader thread and the loop consuming it."""
    return queue.Queue(maxsize=1024)


def _drain(
    call,
    stop: threading.Event,
    idle: Callable[[], float],
    items: queue.Queue | None = None,
) -> Iterator[object]:
    """Yields the messages of a streaming ``call`` from a reader thread, ``None`` whenever
    ``idle()`` seconds pass without one, and finally the ``grpc.RpcError`` that ended it, if
    any. Returns when the stream ends or ``stop`` is set (cancelling the call).

    ``items``, when given, is the queue the reader thread fills (from :func:`_stream_queue`):
    another thread may ``put_nowait`` a marker of its own into it, which is yielded as is."""
    items = _stream_queue() if items is None else items
    closed = threading.Event()

    def put(item) -> None:
        while not closed.is_set():
            try:
                items.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    def read() -> None:
        try:
            for message in call:
                put(message)
        except grpc.RpcError as err:
            put(err)
        put(_END)

    reader = threading.Thread(target=read, name="outage-relay-stream", daemon=True)
    reader.start()
    try:
        while not stop.is_set():
            try:
                item = items.get(timeout=idle())
            except queue.Empty:
                yield None
                continue
            if item is _END:
                return
            yield item
    finally:
        closed.set()
        call.cancel()


def _describe(err: grpc.RpcError) -> str:
    return f"{err.code().name}: {err.details()}"


def _log(message: str) -> None:
    print(f"outage_relay_client: {message}", file=sys.stderr, flush=True)


@dataclass
class _AckCall:
    """The ``Ack`` under way: the sequence it acknowledges, and grpcio's future of it."""

    sequence: int
    future: grpc.Future


class Subscriber:
    """Receives one subscriber's alerts, acknowledges them and resumes where it left off.

    ``connect`` makes a new channel for each connection; ``handler`` gets every alert once per
    run, in sequence order; ``state``, when given, keeps the last acknowledged sequence across
    restarts. ``once_count`` stops after that many alerts (acknowledged).
    """

    def __init__(
        self,
        protos: Protos,
        connect: Callable[[], grpc.Channel],
        subscriber: str,
        handler: AlertHandler,
        state: StateFile | None = None,
        from_sequence: int = 0,
        ack_every: int = 100,
        once_count: int | None = None,
    ):
        self._protos = protos
        self._connect = connect
        self._subscriber = subscriber
        self._handler = handler
        self._state = state
        self._ack_every = ack_every
        self._once_count = once_count
        saved = state.load() if state else 0
        #: The highest sequence handled: the stream resumes after it.
        self.handled = saved if saved > 0 else max(from_sequence - 1, 0)
        #: The highest sequence acknowledged (and saved), or skipped with ``from_sequence``:
        #: alerts before ``from_sequence`` are never acknowledged by this client.
        self.acked = self.handled
        #: Alerts handled in this run.
        self.received = 0
        #: The highest sequence the handler has flushed.
        self._flushed = self.handled
        #: The ``Ack`` under way, if one is: at most one at a time.
        self._in_flight: _AckCall | None = None

    def run(self, stop: threading.Event) -> None:
        """Subscribes until ``stop`` is set or ``once_count`` is reached, reconnecting after
        errors the relay may recover from; raises the ``grpc.RpcError`` of a refusal."""
        backoff = Backoff()
        while not stop.is_set() and not self._done():
            received_before = self.received
            try:
                self._session(stop)
                if stop.is_set() or self._done():
                    return
                _log("the relay ended the subscription")
            except grpc.RpcError as err:
                if err.code() in PERMANENT:
                    raise
                _log(f"subscription failed: {_describe(err)}")
            if self.received > received_before:
                backoff.reset()
            delay = backoff.next()
            _log(f"reconnecting in {delay:.2f} s, resuming after sequence {self.handled}")
            stop.wait(delay)

    def _done(self) -> bool:
        return self._once_count is not None and self.received >= self._once_count

    def _session(self, stop: threading.Event) -> None:
        """One connection: subscribe, handle and acknowledge until the stream ends or stops.

        Everything runs on this thread but the stream's reader and grpcio's own: the answer of
        the ``Ack`` under way only wakes it up (a marker in the stream's queue), and it takes
        the answer and sends the next ack itself."""
        alerts = self._protos.alerts
        with self._connect() as channel:
            feed = self._protos.alerts_grpc.AlertFeedStub(channel)
            from_sequence = self.handled + 1 if self.handled > 0 else 0
            call = feed.Subscribe(
                alerts.SubscribeRequest(subscriber=self._subscriber, from_sequence=from_sequence)
            )
            start = from_sequence or "the oldest unacknowledged"
            _log(f"subscribing as {self._subscriber} from sequence {start}")
            items = _stream_queue()

            def answered(_future) -> None:
                # On a grpcio thread: wake the session, which takes the answer itself. A full
                # queue wakes it anyway, and every ack it makes takes the answer first.
                with contextlib.suppress(queue.Full):
                    items.put_nowait(_ACK_ANSWERED)

            since_ack = 0
            try:
                with contextlib.closing(_drain(call, stop, self._idle_wait, items)) as stream:
                    for item in stream:
                        if item is None or item is _ACK_ANSWERED:
                            # Idle, or the ack under way was answered: acknowledge what is left.
                            self._ack(feed, answered)
                            since_ack = 0
                            continue
                        if isinstance(item, grpc.RpcError):
                            if item.code() == grpc.StatusCode.CANCELLED and stop.is_set():
                                return
                            raise item
                        if item.sequence <= self.handled:
                            continue
                        self._handler.handle(item)
                        self.handled = item.sequence
                        self.received += 1
                        since_ack += 1
                        if self._done():
                            return
                        if since_ack >= self._ack_every:
                            self._ack(feed, answered)
                            since_ack = 0
            finally:
                self._ack_last(feed)

    def _covered(self) -> int:
        """The highest sequence acknowledged or in the ack under way."""
        return self._in_flight.sequence if self._in_flight else self.acked

    def _pending(self) -> bool:
        return self.handled > self._covered()

    def _idle_wait(self) -> float:
        """How long the stream may be quiet before pending alerts are acknowledged."""
        return IDLE_ACK_AFTER if self._pending() else POLL

    def _ack(
        self,
        feed,
        on_answer: Callable[[grpc.Future], None] | None = None,
        timeout: float = ACK_TIMEOUT,
    ) -> None:
        """Takes the answer of the ack under way if it has come, flushes the handler, then,
        unless an ack is still under way, saves the state and sends an ack for everything
        handled, without waiting for it (``on_answer`` is called, on another thread, once it is
        answered). Raises the ``grpc.RpcError`` of a failed ack."""
        self._take_answer()
        if not self._pending():
            return
        self._flush()
        if self._in_flight is not None:
            return  # The next ack goes when this one is answered: acks are cumulative.
        sequence = self.handled
        if self._state:
            self._state.save(sequence)
        request = self._protos.alerts.AckRequest(subscriber=self._subscriber, sequence=sequence)
        future = feed.Ack.future(request, timeout=timeout)
        self._in_flight = _AckCall(sequence, future)
        if on_answer is not None:
            future.add_done_callback(on_answer)

    def _flush(self) -> None:
        """Flushes the handler, if it has handled alerts since it was last flushed."""
        if self.handled > self._flushed:
            self._handler.flush()
            self._flushed = self.handled

    def _take_answer(self, timeout: float | None = None) -> None:
        """Takes the answer of the ack under way if it has come, or within ``timeout`` seconds
        when given (else ``grpc.FutureTimeoutError``, leaving it under way): ``acked``
        advances, or the ``grpc.RpcError`` of a failed ack is raised, what it covered then
        pending again."""
        call = self._in_flight
        if call is None or (timeout is None and not call.future.done()):
            return
        try:
            call.future.result(timeout=timeout)
        except grpc.RpcError:
            self._in_flight = None
            raise
        self._in_flight = None
        self.acked = max(self.acked, call.sequence)

    def _ack_last(self, feed) -> None:
        """Best-effort acknowledgement when a session ends, within ``ACK_TIMEOUT`` in all:
        flushes the handler, waits for the ack under way, then acknowledges what is left and
        waits for that (the state is saved regardless)."""
        self._flush()
        deadline = time.monotonic() + ACK_TIMEOUT

        def remaining() -> float:
            return max(deadline - time.monotonic(), 0.0)

        self._wait_last(remaining())
        try:
            self._ack(feed, timeout=remaining())
        except grpc.RpcError as err:
            _log(f"last ack failed: {_describe(err)}")
        self._wait_last(remaining())

    def _wait_last(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds for the ack under way, if any; gives it up then."""
        if self._in_flight is None:
            return
        try:
            self._take_answer(timeout)
        except grpc.RpcError as err:
            _log(f"last ack failed: {_describe(err)}")
        except grpc.FutureTimeoutError:
            _log(f"last ack timed out: {self._in_flight.sequence} not acknowledged")
            self._in_flight.future.cancel()
            self._in_flight = None


def watch_summaries(
    protos: Protos,
    connect: Callable[[], grpc.Channel],
    subscriber: str,
    interval: float | None,
    on_summary: Callable[[object], None],
    stop: threading.Event,
    once_count: int | None = None,
) -> None:
    """Watches ``subscriber``'s storm summaries every ``interval`` seconds (``None``: the
    relay's default) until ``stop`` or ``once_count`` summaries, reconnecting like
    :class:`Subscriber`; raises the ``grpc.RpcError`` of a refusal."""
    request = protos.summaries.SummaryRequest(subscriber=subscriber)
    if interval is not None:
        request.interval.FromNanoseconds(round(interval * 1e9))
    backoff = Backoff()
    received = 0
    while not stop.is_set():
        try:
            with connect() as channel:
                call = protos.alerts_grpc.AlertFeedStub(channel).WatchSummaries(request)
                with contextlib.closing(_drain(call, stop, lambda: POLL)) as stream:
                    for item in stream:
                        if isinstance(item, grpc.RpcError):
                            if item.code() == grpc.StatusCode.CANCELLED and stop.is_set():
                                return
                            raise item
                        if item is None:
                            continue
                        on_summary(item)
                        received += 1
                        backoff.reset()
                        if once_count is not None and received >= once_count:
                            return
            if stop.is_set():
                return
            _log("the relay ended the summary stream")
        except grpc.RpcError as err:
            if err.code() in PERMANENT:
                raise
            _log(f"summary stream failed: {_describe(err)}")
        stop.wait(backoff.next())


def parse_duration(text: str) -> float:
    """``500ms``, ``2s``, ``1m``: seconds, as a float."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 500ms, 2s or 1m")
    value, unit = float(match[1]), match[2]
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def positive(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """Exits 64 on a usage error, as the relay's own commands do."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = _Parser(prog="outage_relay_client.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    subscribe = commands.add_parser("subscribe", help="receive and acknowledge alerts")
    watch = commands.add_parser("watch-summaries", help="print storm summaries")
    for command in (subscribe, watch):
        command.add_argument(
            "--target",
            metavar="URL",
            default="http://127.0.0.1:50051",
            help="the relay (default %(default)s)",
        )
        command.add_argument(
            "--subscriber", metavar="NAME", required=True, help="whose alerts or areas, e.g. ukpn"
        )
        command.add_argument(
            "--output",
            type=Path,
            metavar="FILE",
            help="append JSON lines to FILE instead of stdout",
        )
        command.add_argument(
            "--once-count", type=positive, metavar="N", help="stop after N alerts or summaries"
        )
        command.add_argument(
            "--proto-dir",
            metavar="DIR",
            type=Path,
            default=DEFAULT_PROTO_DIR,
            help="the relay's proto/ directory",
        )
        command.add_argument(
            "--tls-ca",
            type=Path,
            metavar="FILE",
            help="CA the relay's certificate chains to; turns TLS on",
        )
        command.add_argument(
            "--tls-cert", type=Path, metavar="FILE", help="client certificate (mutual TLS)"
        )
        command.add_argument("--tls-key", type=Path, metavar="FILE", help="key of --tls-cert")
        command.add_argument(
            "--tls-domain",
            metavar="NAME",
            help="name on the relay's certificate, if not the target's host",
        )
    subscribe.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="keep the last acknowledged sequence here and resume after it",
    )
    subscribe.add_argument(
        "--from-sequence",
        type=int,
        default=0,
        metavar="N",
        help="first sequence when there is no state yet (0 = oldest unacknowledged)",
    )
    subscribe.add_argument(
        "--ack-every",
        type=positive,
        default=100,
        metavar="N",
        help="acknowledge at least every N alerts (default %(default)s)",
    )
    watch.add_argument(
        "--interval", type=parse_duration, help="how often, e.g. 5s (default: the relay's)"
    )
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert and not args.tls_ca:
        parser.error("--tls-cert needs --tls-ca")
    if args.tls_domain and not args.tls_ca:
        parser.error("--tls-domain needs --tls-ca")
    if args.command == "subscribe" and args.from_sequence < 0:
        parser.error("--from-sequence must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    tls = Tls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_domain) if args.tls_ca else None
    try:
        protos = load_protos(args.proto_dir)
        open_channel(args.target, tls).close()
        output = JsonLines(args.output)
        connect = functools.partial(open_channel, args.target, tls)
        if args.command == "subscribe":
            state = StateFile(args.state, args.subscriber) if args.state else None
            subscriber = Subscriber(
                protos,
                connect,
                args.subscriber,
                output,
                state=state,
                from_sequence=args.from_sequence,
                ack_every=args.ack_every,
                once_count=args.once_count,
            )
            subscriber.run(stop)
            received, acked = subscriber.received, subscriber.acked
            _log(f"stopped: {received} alerts received, acknowledged up to {acked}")
        else:

            def on_summary(summary) -> None:
                output.write(json_format.MessageToDict(summary, preserving_proto_field_name=True))
                output.flush()

            watch_summaries(
                protos, connect, args.subscriber, args.interval, on_summary, stop, args.once_count
            )
        output.flush()
    except UsageError as err:
        _log(str(err))
        return EXIT_USAGE
    except grpc.RpcError as err:
        _log(f"refused: {_describe(err)}")
        return 1
    except OSError as err:
        _log(f"output failed: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
