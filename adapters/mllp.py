"""MLLP listener: HL7 v2 messages over TCP (``0x0B message 0x1C 0x0D``), one ACK per message.

Built on python-hl7's asyncio streams (``hl7.mllp.start_hl7_server``, ``HL7StreamReader``,
``HL7StreamWriter``). Frames are read with the reader's ``readuntil`` rather than its
``readblock``: ``readblock`` throws away a good frame that follows stray bytes and, past the
limit, throws away the start of the message too (so no AR could name it).

For each connection, frames are handled one after another (MLLP is send-and-wait):

- a frame's bytes go to ``on_message(message, peer)``, which stores it (or knows it stored it
  already: a resend) and returns an :data:`~adapters.hl7v2.Outcome`; the ACK that
  :func:`~adapters.hl7v2.ack_for` builds for it goes back. AA leaves only after ``on_message``
  returned :class:`~adapters.hl7v2.Accepted`, that is after the data is stored. An exception or
  a timeout in ``on_message`` is answered AR (207): the sender sends again.
- bytes outside a frame are discarded (the next frame is still answered);
- a frame longer than ``max_message_bytes``: AR if its MSH could be read, then the connection
  is closed (its rest is never buffered: the reader holds at most about twice the limit);
- a frame without its end, then a disconnect: nothing to answer, the connection ends;
- no complete frame within ``idle_timeout_seconds`` (an idle or a trickling peer): closed;
- beyond ``max_connections`` connections: a new one is closed at once.

Nothing is logged of a message but its control id when that is a plain token; exceptions are
logged by type, never by text (their text may quote a value).

Also here: :func:`serve_echo`, the same listener answering AA from the MSH alone (a benchmark's
baseline), and :func:`send_messages`, a send-and-wait client for tests, benchmarks and the demo.
docs/hl7v2.md describes the API.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from hl7.mllp import start_hl7_server  # type: ignore[import-untyped]

from adapters.hl7v2 import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    Accepted,
    ErrorCode,
    NotMappable,
    Outcome,
    Rejected,
    ack_for,
    control_id_of,
    header_of,
)

_log = logging.getLogger(__name__)

_SEPARATOR = END_BLOCK + CARRIAGE_RETURN
_HEAD_BYTES = 16_384  # of an oversize frame, kept to read its MSH


@dataclass(frozen=True, slots=True)
class Peer:
    """The other end of a connection: its address and this listener's number for it."""

    host: str
    port: int
    connection: int


OnMessage = Callable[[bytes, Peer], Awaitable[Outcome]]


class _Oversize(Exception):
    def __init__(self, head: bytes) -> None:
        super().__init__("frame exceeds the limit")
        self.head = head


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next MLLP frame's message bytes, or ``None`` for bytes that held no frame start.

    Raises ``asyncio.IncompleteReadError`` at the end of the stream (a frame cut short
    included) and :class:`_Oversize` (with the frame's first bytes) past the reader's limit."""
    try:
        block = await reader.readuntil(_SEPARATOR)
    except asyncio.LimitOverrunError as error:
        # The bytes counted by ``consumed`` are still in the buffer: take the head only.
        head = await reader.readexactly(min(error.consumed, _HEAD_BYTES))
        raise _Oversize(head) from None
    start = block.rfind(START_BLOCK)
    if start < 0:
        return None
    if start > 0:
        _log.info("mllp: %d bytes before a frame discarded", start)
    return block[start + 1 : -len(_SEPARATOR)]


@dataclass(slots=True)
class _Connection:
    peer: Peer
    busy: bool = False


class MllpListener:
    """An MLLP server calling ``on_message`` for each message and answering with its ACK."""

    def __init__(
        self,
        on_message: OnMessage,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        max_message_bytes: int = 1_048_576,
        idle_timeout_seconds: float = 30.0,
        max_connections: int = 64,
        handler_timeout_seconds: float | None = 60.0,
        close_timeout_seconds: float = 5.0,
    ) -> None:
        if max_message_bytes < 16 or max_connections < 1 or idle_timeout_seconds <= 0:
            raise ValueError("max_message_bytes, max_connections and the timeout must be positive")
        self._on_message = on_message
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        self._idle_timeout = idle_timeout_seconds
        self._max_connections = max_connections
        self._handler_timeout = handler_timeout_seconds
        self._close_timeout = close_timeout_seconds
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._numbers = itertools.count(1)
        self._closing = False

    @property
    def port(self) -> int:
        """The bound port (the one the system chose when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the listener is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """How many connections are open."""
        return len(self._connections)

    async def start(self) -> tuple[str, int]:
        """Listen; the address and the bound port (the system's choice for port 0)."""
        if self._server is not None:
            raise RuntimeError("the listener is already started")
        self._closing = False
        # The limit bounds the bytes before the frame's end: start block + message.
        self._server = await start_hl7_server(
            self._accept, self._host, self._port, limit=self._max_message_bytes + 1
        )
        _log.info("mllp: listening on %s:%d", self._host, self.port)
        return self._host, self.port

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled; then close gracefully."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop accepting, end idle connections, let messages being handled finish (up to
        ``close_timeout_seconds``, then they are cancelled) and close every connection."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task, connection in list(self._connections.items()):
            if not connection.busy:
                task.cancel()
        tasks = list(self._connections)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> MllpListener:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- connections ---------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: Any) -> None:
        address = writer.get_extra_info("peername") or ("", 0)
        peer = Peer(str(address[0]), int(address[1]), next(self._numbers))
        if self._closing or len(self._connections) >= self._max_connections:
            _log.warning("mllp: connection %d refused (limit or closing)", peer.connection)
            writer.close()
            return
        connection = _Connection(peer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, connection))
        self._connections[task] = connection
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            _log.error("mllp: connection ended by %s", type(task.exception()).__name__)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: Any, connection: _Connection
    ) -> None:
        peer = connection.peer
        _log.info("mllp: connection %d from %s", peer.connection, peer.host)
        try:
            while not self._closing:
                try:
                    message = await asyncio.wait_for(read_frame(reader), self._idle_timeout)
                except TimeoutError:
                    _log.info("mllp: connection %d idle, closed", peer.connection)
                    return
                except asyncio.IncompleteReadError as end:
                    if end.partial.strip():
                        _log.info("mllp: connection %d ended inside a frame", peer.connection)
                    return
                except _Oversize as oversize:
                    await self._refuse_oversize(reader, writer, oversize.head, peer)
                    return
                if message is None:
                    _log.info("mllp: connection %d sent bytes outside a frame", peer.connection)
                    continue
                connection.busy = True
                try:
                    outcome = await self._handle(message, peer)
                    await self._send(writer, ack_for(message, outcome))
                finally:
                    connection.busy = False
                _log.info(
                    "mllp: connection %d message %s answered %s",
                    peer.connection,
                    control_id_of(message) or "(control id unreadable)",
                    type(outcome).__name__,
                )
        except (ConnectionError, TimeoutError, OSError) as error:
            _log.info("mllp: connection %d lost (%s)", peer.connection, type(error).__name__)
        finally:
            writer.close()
            with suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _handle(self, message: bytes, peer: Peer) -> Outcome:
        try:
            if self._handler_timeout is None:
                outcome = await self._on_message(message, peer)
            else:
                outcome = await asyncio.wait_for(
                    self._on_message(message, peer), self._handler_timeout
                )
            if isinstance(outcome, Accepted | NotMappable | Rejected):
                return outcome
            _log.error("mllp: connection %d: handler returned no outcome", peer.connection)
            return Rejected(
                ErrorCode.APPLICATION_INTERNAL_ERROR,
                "the gateway could not process the message; send it again",
            )
        except TimeoutError:
            _log.error("mllp: connection %d: handling timed out", peer.connection)
            return Rejected(
                ErrorCode.APPLICATION_INTERNAL_ERROR,
                "the gateway did not finish in time; send the message again",
            )
        except Exception as error:  # the sender must get an answer; the ingest side logs
            _log.error(
                "mllp: connection %d: handler failed (%s)", peer.connection, type(error).__name__
            )
            return Rejected(
                ErrorCode.APPLICATION_INTERNAL_ERROR,
                "the gateway could not process the message; send it again",
            )

    async def _send(self, writer: Any, ack: bytes) -> None:
        writer.writeblock(ack)
        await asyncio.wait_for(writer.drain(), self._idle_timeout)

    async def _refuse_oversize(
        self, reader: asyncio.StreamReader, writer: Any, head: bytes, peer: Peer
    ) -> None:
        start = head.find(START_BLOCK)
        body = head[start + 1 :] if start >= 0 else b""
        _log.warning(
            "mllp: connection %d sent a frame over %d bytes; closed",
            peer.connection,
            self._max_message_bytes,
        )
        if header_of(body) is None:
            return
        refusal = Rejected(
            ErrorCode.APPLICATION_INTERNAL_ERROR,
            f"the message is larger than {self._max_message_bytes} bytes",
        )
        with suppress(ConnectionError, TimeoutError, OSError):
            await self._send(writer, ack_for(body, refusal))
            # Closing with unread bytes would reset the connection, and a reset can destroy the
            # AR before the peer reads it: say we are done, then drop what still arrives (for a
            # short while, never keeping it).
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(min(self._idle_timeout, 2.0)):
                while await reader.read(65_536):
                    pass


# -- a baseline server and a client, for tests, benchmarks and the demo ---------------------


async def _accept_everything(_message: bytes, _peer: Peer) -> Outcome:
    return Accepted()


async def serve_echo(host: str = "127.0.0.1", port: int = 0, **options: Any) -> MllpListener:
    """A started MLLP server with the listener's framing, limits and ACK writer that answers
    every frame AA (CA) from its MSH alone, reading nothing else of it and storing nothing:
    the baseline a benchmark compares the gateway's listener with. ``options`` are
    :class:`MllpListener`'s. Close it with ``await server.close()``."""
    server = MllpListener(_accept_everything, host=host, port=port, **options)
    await server.start()
    return server


async def send_messages(
    host: str, port: int, messages: Iterable[bytes], *, timeout_seconds: float = 30.0
) -> list[bytes]:
    """Send ``messages`` on one connection, send and wait (each framed, its ACK read before
    the next goes); the ACKs without their framing. Raises ``asyncio.IncompleteReadError``
    when the server closes the connection before an ACK and ``TimeoutError`` when one takes
    longer than ``timeout_seconds``."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    acks: list[bytes] = []
    try:
        for message in messages:
            writer.write(START_BLOCK + message + _SEPARATOR)
            await asyncio.wait_for(writer.drain(), timeout_seconds)
            block = await asyncio.wait_for(reader.readuntil(_SEPARATOR), timeout_seconds)
            start = block.find(START_BLOCK)
            acks.append(block[start + 1 : -len(_SEPARATOR)])
    finally:
        writer.close()
        with suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout_seconds)
    return acks
