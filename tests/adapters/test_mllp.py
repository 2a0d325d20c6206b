"""The MLLP listener on a real loopback socket: one ACK per frame, AA only after the handler
stored the message, AE/AR with an ERR for what is wrong, and after any bad input a good
message on the same and on a new connection still answered AA. Limits: the size of a frame,
an idle peer, the number of connections."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as member
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2 import (
    Accepted,
    ErrorCode,
    Limits,
    NotMappable,
    Outcome,
    Rejected,
    mllp_frame,
    outcome_for,
    parse_message,
)
from adapters.mllp import MllpListener, Peer, send_messages, serve_echo
from gateway.synth.hl7 import ref_i12_messages
from gateway.vocabulary.source import Place, SourceRecord
from tests.adapters.hl7_fixtures import (
    assert_shows_no,
    field,
    read_ack,
    referral,
    segments,
    set_field,
)
from tests.adapters.test_hl7v2 import CASES, Case
from tests.support.reach import Reach

KNOWN_FACILITY = "HOPE_SHELTER"
END = b"\x1c\r"
SOCKET_TIMEOUT = 20.0


@dataclass
class Ingest:
    """A handler like the ingest layer's: knows one facility, reads the message, 'stores' a
    record (remembers its control id) and only then says Accepted."""

    limits: Limits = member(default_factory=lambda: Limits(max_field_chars=1_000))
    stored: list[str] = member(default_factory=list)
    calls: int = 0

    async def __call__(self, message: bytes, peer: Peer) -> Outcome:
        self.calls += 1
        assert peer.host == "127.0.0.1"
        assert peer.connection >= 1
        parsed = parse_message(message, limits=self.limits)
        if isinstance(parsed, SourceRecord):
            if parsed.fields["sending_facility"] != KNOWN_FACILITY:
                return Rejected(
                    ErrorCode.UNKNOWN_KEY_IDENTIFIER,
                    "the sending facility is not a partner",
                    Place(segment="MSH", field="MSH-4"),
                )
            await asyncio.sleep(0)  # a store write would yield to the loop
            self.stored.append(parsed.fields["control_id"])
            return Accepted()
        outcome = outcome_for(parsed)
        assert outcome is not None
        return outcome


# -- a listener on its own loop, for plain-socket clients ----------------------------------


@dataclass
class Running:
    listener: MllpListener
    host: str
    port: int
    loop: asyncio.AbstractEventLoop

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=SOCKET_TIMEOUT)

    def connections(self) -> int:
        async def count() -> int:
            return self.listener.connections

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(SOCKET_TIMEOUT)


@contextmanager
def running(handler: Any, **options: Any) -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    listener = MllpListener(handler, host="127.0.0.1", port=0, **options)
    host, port = asyncio.run_coroutine_threadsafe(listener.start(), loop).result(SOCKET_TIMEOUT)
    try:
        yield Running(listener, host, port, loop)
    finally:
        asyncio.run_coroutine_threadsafe(listener.close(), loop).result(SOCKET_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SOCKET_TIMEOUT)
        loop.close()


def receive_ack(sock: socket.socket) -> bytes | None:
    """The next ACK's bytes, or ``None`` when the listener closed the connection."""
    data = b""
    while not data.endswith(END):
        try:
            chunk = sock.recv(65_536)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    assert data.startswith(b"\x0b")
    assert data.count(END) == 1
    return data[1:-2]


def exchange(sock: socket.socket, message: bytes) -> bytes | None:
    sock.sendall(mllp_frame(message))
    return receive_ack(sock)


def closed_by_listener(sock: socket.socket) -> bool:
    try:
        return sock.recv(65_536) == b""
    except ConnectionResetError:
        return True


GOOD = referral(21)


def assert_good_message_answered_aa(sock: socket.socket, seed: int) -> None:
    message = referral(seed)
    ack = exchange(sock, message)
    assert ack is not None, "the listener closed the connection"
    parsed = read_ack(ack)
    assert (parsed.code, parsed.control_id) == ("AA", field(message, b"MSH", 10).decode())


# -- tests -------------------------------------------------------------------------------


def test_start_gives_the_bound_port_and_close_stops_listening() -> None:
    async def scenario() -> None:
        async with MllpListener(Ingest(), port=0) as listener:
            assert listener.port > 0
            acks = await send_messages("127.0.0.1", listener.port, [GOOD])
            assert read_ack(acks[0]).code == "AA"
            port = listener.port
        with pytest.raises(OSError):
            await send_messages("127.0.0.1", port, [GOOD])

    asyncio.run(scenario())


def test_aa_is_sent_only_once_the_handler_has_stored_the_message() -> None:
    ingest = Ingest()

    async def scenario() -> None:
        async with MllpListener(ingest, port=0) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            for message in ref_i12_messages(5, seed=3):
                writer.write(mllp_frame(message))
                ack = read_ack((await reader.readuntil(END))[1:-2])
                assert ack.code == "AA"
                assert ingest.stored[-1] == ack.control_id == field(message, b"MSH", 10).decode()
            writer.close()
            await writer.wait_closed()

    asyncio.run(scenario())


def test_eight_concurrent_senders_each_get_every_ack_in_order() -> None:
    ingest = Ingest()
    batches = [list(ref_i12_messages(25, seed=100 + n)) for n in range(8)]

    async def scenario() -> list[list[bytes]]:
        async with MllpListener(ingest, port=0, max_connections=8) as listener:
            return await asyncio.gather(
                *(send_messages("127.0.0.1", listener.port, batch) for batch in batches)
            )

    results = asyncio.run(scenario())

    for batch, acks in zip(batches, results, strict=True):
        answered = [read_ack(ack) for ack in acks]
        assert [a.code for a in answered] == ["AA"] * 25
        assert [a.control_id for a in answered] == [field(m, b"MSH", 10).decode() for m in batch]
    assert len(ingest.stored) == 200


def test_a_resend_is_answered_again_the_handler_decides_what_it_stores() -> None:
    ingest = Ingest()

    async def scenario() -> list[bytes]:
        async with MllpListener(ingest, port=0) as listener:
            return await send_messages("127.0.0.1", listener.port, [GOOD, GOOD, GOOD])

    acks = asyncio.run(scenario())
    assert [read_ack(a).code for a in acks] == ["AA"] * 3
    assert ingest.calls == 3


def test_an_unknown_sending_facility_is_answered_ar_naming_msh_4() -> None:
    stranger = next(ref_i12_messages(1, seed=5, sending_facility="NOBODY_KNOWS"))

    async def scenario() -> list[bytes]:
        async with MllpListener(Ingest(), port=0) as listener:
            return await send_messages("127.0.0.1", listener.port, [stranger, GOOD])

    refused, good = (read_ack(a) for a in asyncio.run(scenario()))
    assert (refused.code, refused.err_location, refused.err_severity) == ("AR", "MSH^1^4", "E")
    assert refused.err_code.startswith("204^")
    assert refused.control_id == field(stranger, b"MSH", 10).decode()
    assert good.code == "AA"


async def _raises(_message: bytes, _peer: Peer) -> Outcome:
    raise RuntimeError("Gonzalez 20020607")


async def _answers_nonsense(_message: bytes, _peer: Peer) -> Outcome:
    return "stored"  # type: ignore[return-value]


async def _never_finishes(_message: bytes, _peer: Peer) -> Outcome:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "handler", [_raises, _answers_nonsense, _never_finishes], ids=["raises", "nonsense", "hangs"]
)
def test_a_failing_handler_is_answered_ar_207_and_the_connection_stays(
    handler: Callable[[bytes, Peer], Any],
) -> None:
    async def scenario() -> list[bytes]:
        async with MllpListener(handler, port=0, handler_timeout_seconds=0.2) as listener:
            return await send_messages("127.0.0.1", listener.port, [GOOD, referral(22)])

    acks = [read_ack(a) for a in asyncio.run(scenario())]
    assert [a.code for a in acks] == ["AR", "AR"]
    assert all(a.err_code.startswith("207^") for a in acks)
    assert all(b"Gonzalez" not in a.raw for a in acks)


# The cases whose limits would refuse the good messages too are the listener's own tests below.
ONE_MESSAGE_CASES = [case for case in CASES if case.limits.max_message_bytes > 10_000
                     and case.limits.max_segments > 100]  # fmt: skip


@pytest.mark.parametrize("case", ONE_MESSAGE_CASES, ids=[case.name for case in ONE_MESSAGE_CASES])
def test_after_each_malformed_message_good_ones_still_get_aa(case: Case) -> None:
    message = case.make(GOOD)
    ingest = Ingest(limits=case.limits)
    with running(ingest) as server, server.connect() as sock:
        ack = exchange(sock, message)
        assert ack is not None
        answered = read_ack(ack)
        assert answered.code == ("AE" if case.outcome is NotMappable else "AR")
        assert answered.err_code.startswith(f"{int(case.code)}^")
        assert answered.err_text
        assert_shows_no(ack, GOOD)

        assert_good_message_answered_aa(sock, 31)
        with server.connect() as fresh:
            assert_good_message_answered_aa(fresh, 32)


def test_enhanced_mode_senders_get_ca_ce_cr() -> None:
    enhanced = referral(23, enhanced_ack=True)
    bad = set_field(enhanced, b"PID", 7, b"20021341")
    ugly = set_field(enhanced, b"MSH", 12, b"2.3")
    with running(Ingest()) as server, server.connect() as sock:
        codes = [read_ack(exchange(sock, m) or b"").code for m in (enhanced, bad, ugly)]
    assert codes == ["CA", "CE", "CR"]


def test_stray_bytes_between_frames_are_dropped_and_the_next_frame_answered() -> None:
    with running(Ingest()) as server, server.connect() as sock:
        sock.sendall(b"Gonzalez 20020607\r\n" + END + b"\x00\xff")
        assert_good_message_answered_aa(sock, 33)
        sock.sendall(b"\x0bMSH|^~\\&|cut short, then restarted" + mllp_frame(referral(34)))
        ack = receive_ack(sock)
        assert ack is not None
        assert read_ack(ack).code == "AA"
        assert_good_message_answered_aa(sock, 35)


def test_a_connection_closed_inside_a_frame_leaves_the_listener_answering() -> None:
    with running(Ingest()) as server:
        with server.connect() as sock:
            sock.sendall(mllp_frame(GOOD)[: len(GOOD) // 2])
        with server.connect() as sock:
            assert_good_message_answered_aa(sock, 36)


def test_a_frame_over_the_limit_is_answered_ar_and_the_connection_closed() -> None:
    big = set_field(GOOD, b"PID", 11, b"x" * 20_000)
    with running(Ingest(), max_message_bytes=8_192) as server:
        with server.connect() as sock:
            sock.sendall(mllp_frame(big))
            ack = receive_ack(sock)
            assert ack is not None
            refused = read_ack(ack)
            assert (refused.code, refused.control_id) == ("AR", field(GOOD, b"MSH", 10).decode())
            assert refused.err_code.startswith("207^")
            assert closed_by_listener(sock)
        with server.connect() as sock:
            assert_good_message_answered_aa(sock, 37)


def test_an_oversize_frame_without_a_readable_msh_is_closed_without_an_ack() -> None:
    with running(Ingest(), max_message_bytes=1_024) as server:
        with server.connect() as sock:
            sock.sendall(b"\x0b" + b"\x00" * 4_000)
            assert receive_ack(sock) is None
        with server.connect() as sock:
            assert_good_message_answered_aa(sock, 38)


def test_an_idle_peer_is_closed_after_the_idle_timeout() -> None:
    with running(Ingest(), idle_timeout_seconds=0.3) as server:
        with server.connect() as sock:
            assert closed_by_listener(sock)
        with server.connect() as sock:
            assert_good_message_answered_aa(sock, 39)
            sock.sendall(b"\x0bMSH|^~\\&|a frame that never ends")
            assert receive_ack(sock) is None  # trickling: closed too


def test_a_connection_beyond_the_limit_is_closed_at_once() -> None:
    with running(Ingest(), max_connections=2) as server:
        first, second = server.connect(), server.connect()
        assert_good_message_answered_aa(first, 40)
        assert_good_message_answered_aa(second, 41)
        with server.connect() as third:
            assert closed_by_listener(third)
        assert_good_message_answered_aa(first, 42)
        first.close()
        for _ in range(2_000):  # until the listener has seen the close
            if server.connections() < 2:
                break
            threading.Event().wait(0.005)
        with server.connect() as fourth:
            assert_good_message_answered_aa(fourth, 43)
        second.close()


def test_the_echo_server_answers_aa_from_the_msh_alone() -> None:
    not_parsed = b"MSH|^~\\&|APP|FAC|GW|GWF|20261102||REF^I12|CTRL-1|P|2.5.1\rZZZ|\x01nonsense\r"

    async def scenario() -> list[bytes]:
        server = await serve_echo("127.0.0.1", 0)
        try:
            return await send_messages("127.0.0.1", server.port, [not_parsed, GOOD])
        finally:
            await server.close()

    first, second = (read_ack(a) for a in asyncio.run(scenario()))
    assert (first.code, first.control_id) == ("AA", "CTRL-1")
    assert (second.code, second.control_id) == ("AA", field(GOOD, b"MSH", 10).decode())


def test_any_bytes_in_a_frame_get_exactly_one_ack_and_never_break_the_listener() -> None:
    reach = Reach("mllp any frame")
    msh = segments(GOOD)[0] + b"\r"

    with running(Ingest(), max_message_bytes=4_096) as server:

        @settings(max_examples=120, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
        @given(
            head=st.sampled_from([b"", msh, b"MSH|", b"MSH|^~\\&|"]),
            body=st.binary(max_size=600),
            oversize=st.booleans(),
        )
        def holds(head: bytes, body: bytes, oversize: bool) -> None:
            reach.example()
            payload = (head + body).replace(b"\x1c", b"")
            if oversize:
                payload = msh + b"x" * 5_000
            with server.connect() as sock:
                sock.sendall(mllp_frame(payload))
                ack = receive_ack(sock)
                if oversize:
                    assert ack is not None
                    assert read_ack(ack).code == "AR"
                    assert closed_by_listener(sock)
                    return
                reach.hit()
                assert ack is not None, "no ACK for a frame within the limit"
                assert read_ack(ack).code in ("AA", "AE", "AR")
                assert_good_message_answered_aa(sock, 44)  # exactly one ACK came before

        holds()
    reach.check(minimum=0.3)
