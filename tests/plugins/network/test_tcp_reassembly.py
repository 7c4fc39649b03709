"""The mirror's TCP reassembler fed with synthetic segment sequences: order, reordering,
duplicates, overlapping retransmissions, wraparound, connections joined mid-stream, FIN,
RST, the out-of-order bound and capture loss seen in the server's acknowledgements."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord_network.agent.tcp_reassembly import (
    ACK,
    FIN,
    RST,
    SEQ_SPACE,
    SYN,
    ClientStreamReassembler,
    StreamEnd,
)


def opened(isn: int, **bounds: int) -> ClientStreamReassembler:
    """A reassembler that saw the client's SYN with ``isn``: data starts at ``isn + 1``."""
    stream = ClientStreamReassembler(**bounds)
    assert stream.client_segment(isn, SYN, b"") == b""
    return stream


def seq_at(isn: int, offset: int) -> int:
    return (isn + 1 + offset) % SEQ_SPACE


def test_in_order_segments_are_delivered_at_once() -> None:
    stream = opened(1000)
    assert stream.syn_seen and stream.first_seq == 1001
    assert stream.client_segment(1001, ACK, b"GET / HTTP/1.1\r\n") == b"GET / HTTP/1.1\r\n"
    assert stream.client_segment(1017, ACK, b"Host: x\r\n\r\n") == b"Host: x\r\n\r\n"
    assert stream.delivered == 27
    assert stream.end is None


def test_reordered_segments_wait_for_the_gap() -> None:
    stream = opened(5)
    assert stream.client_segment(seq_at(5, 6), ACK, b"ghi") == b""
    assert stream.client_segment(seq_at(5, 3), ACK, b"def") == b""
    assert stream.buffered == 6
    assert stream.client_segment(seq_at(5, 9), ACK, b"jkl") == b""
    assert stream.client_segment(seq_at(5, 0), ACK, b"abc") == b"abcdefghijkl"
    assert stream.buffered == 0
    assert stream.client_segment(seq_at(5, 12), ACK, b"m") == b"m"


def test_duplicates_are_delivered_once() -> None:
    stream = opened(77)
    assert stream.client_segment(seq_at(77, 0), ACK, b"hello") == b"hello"
    assert stream.client_segment(seq_at(77, 0), ACK, b"hello") == b""
    assert stream.client_segment(seq_at(77, 8), ACK, b"ld") == b""
    assert stream.client_segment(seq_at(77, 8), ACK, b"ld") == b""
    assert stream.buffered == 2
    assert stream.client_segment(seq_at(77, 5), ACK, b"wor") == b"world"
    assert stream.delivered == 10


def test_overlapping_retransmissions_keep_the_first_bytes_received() -> None:
    stream = opened(0)
    assert stream.client_segment(seq_at(0, 0), ACK, b"0123") == b"0123"
    # Buffered first: bytes 10..13 and 16..19.
    assert stream.client_segment(seq_at(0, 10), ACK, b"AAAA") == b""
    assert stream.client_segment(seq_at(0, 16), ACK, b"CCCC") == b""
    # A retransmission overlapping delivered bytes, both buffered pieces and the gaps
    # between them: only the gaps take its bytes.
    merged = stream.client_segment(seq_at(0, 2), ACK, b"xxyyyyyyBBBBBBBBBBBBzz")
    assert merged == b"yyyyyy" + b"AAAA" + b"BB" + b"CCCC" + b"BB" + b"zz"
    assert stream.delivered == 24
    # A segment overlapping only the start of a buffered piece.
    assert stream.client_segment(seq_at(0, 30), ACK, b"PPPP") == b""
    assert stream.client_segment(seq_at(0, 28), ACK, b"qqqqqqqq") == b""
    assert stream.client_segment(seq_at(0, 24), ACK, b"rrrr") == b"rrrrqqPPPPqq"


def test_sequence_numbers_wrap_around() -> None:
    isn = SEQ_SPACE - 5
    stream = opened(isn)
    data = bytes(range(40))
    # Out of order across the wrap: bytes 20..39 (past 2**32) before 0..19 (before it).
    assert stream.client_segment(seq_at(isn, 20), ACK, data[20:]) == b""
    assert stream.client_segment(seq_at(isn, 0), ACK, data[:20]) == data
    assert seq_at(isn, 20) < seq_at(isn, 0)
    assert stream.client_segment(seq_at(isn, 40), ACK | FIN, b"!") == b"!"
    assert stream.end is StreamEnd.FIN


@pytest.mark.parametrize("isn", [SEQ_SPACE - 1, SEQ_SPACE - 2, SEQ_SPACE - 1448])
def test_isn_next_to_the_wrap(isn: int) -> None:
    stream = opened(isn)
    assert stream.first_seq == (isn + 1) % SEQ_SPACE
    chunk = bytes(range(256)) * 8
    assert stream.client_segment(seq_at(isn, 2048), ACK, chunk) == b""
    assert stream.client_segment(seq_at(isn, 0), ACK, chunk) == chunk * 2
    assert stream.client_segment(seq_at(isn, 0), ACK, chunk) == b""  # an old duplicate


def test_mid_stream_start_without_syn() -> None:
    stream = ClientStreamReassembler()
    # A bare ACK of a connection opened before the capture carries nothing to start from.
    assert stream.client_segment(90_000, ACK, b"") == b""
    assert not stream.started
    assert stream.client_segment(100_000, ACK, b"second request") == b"second request"
    assert stream.started and not stream.syn_seen and stream.first_seq == 100_000
    # Bytes before the first data seen are ignored, even when they arrive later.
    assert stream.client_segment(99_990, ACK, b"first part") == b""
    # A segment straddling the start contributes only what follows the delivered bytes.
    assert stream.client_segment(99_996, ACK, b"partsecond request, more") == b", more"
    assert stream.delivered == len(b"second request, more")


def test_fin_delivers_every_byte_before_it_then_ends() -> None:
    stream = opened(9)
    assert stream.client_segment(seq_at(9, 0), ACK, b"abc") == b"abc"
    # The FIN arrives before the bytes in front of it.
    assert stream.client_segment(seq_at(9, 6), ACK | FIN, b"ghi") == b""
    assert stream.end is None
    assert stream.client_segment(seq_at(9, 3), ACK, b"def") == b"defghi"
    assert stream.end is StreamEnd.FIN
    # Nothing after the end: retransmissions, bytes beyond the FIN.
    assert stream.client_segment(seq_at(9, 6), ACK | FIN, b"ghi") == b""
    assert stream.client_segment(seq_at(9, 9), ACK, b"jkl") == b""
    assert not stream.closed
    stream.server_segment(ACK | FIN, seq_at(9, 10))
    assert stream.closed and stream.end is StreamEnd.FIN


def test_bytes_beyond_the_fin_are_cut() -> None:
    stream = opened(1)
    assert stream.client_segment(seq_at(1, 4), ACK, b"efgh") == b""
    assert stream.client_segment(seq_at(1, 0), ACK | FIN, b"abcdef") == b"abcdef"
    assert stream.end is StreamEnd.FIN and stream.delivered == 6


def test_bare_fin_ends_an_empty_stream() -> None:
    stream = opened(400)
    assert stream.client_segment(seq_at(400, 0), ACK | FIN, b"") == b""
    assert stream.end is StreamEnd.FIN and stream.delivered == 0


def test_client_reset_ends_at_once() -> None:
    stream = opened(50)
    assert stream.client_segment(seq_at(50, 0), ACK, b"abc") == b"abc"
    assert stream.client_segment(seq_at(50, 10), ACK, b"later") == b""
    assert stream.client_segment(seq_at(50, 3), RST | ACK, b"") == b""
    assert stream.end is StreamEnd.RESET and stream.buffered == 0 and stream.closed
    assert stream.client_segment(seq_at(50, 3), ACK, b"defghij") == b""


def test_server_reset_ends_at_once() -> None:
    stream = opened(50)
    assert stream.client_segment(seq_at(50, 0), ACK, b"abc") == b"abc"
    stream.server_segment(RST, 0)
    assert stream.end is StreamEnd.RESET
    assert stream.client_segment(seq_at(50, 3), ACK, b"def") == b""


def test_reset_far_outside_the_window_is_ignored() -> None:
    stream = opened(50, max_out_of_order_bytes=1000)
    assert stream.client_segment(seq_at(50, 0), ACK, b"abc") == b"abc"
    stream.client_segment(seq_at(50, 100_000), RST, b"")
    assert stream.end is None


def test_out_of_order_byte_bound_ends_the_stream_as_lost() -> None:
    stream = opened(0, max_out_of_order_bytes=100)
    assert stream.client_segment(seq_at(0, 0), ACK, b"x" * 10) == b"x" * 10
    assert stream.client_segment(seq_at(0, 20), ACK, b"y" * 60) == b""
    assert stream.client_segment(seq_at(0, 80), ACK, b"z" * 50) == b""
    assert stream.end is StreamEnd.LOST and stream.buffered == 0
    assert stream.client_segment(seq_at(0, 10), ACK, b"w" * 10) == b""


def test_out_of_order_segment_bound_ends_the_stream_as_lost() -> None:
    stream = opened(0, max_out_of_order_segments=4)
    for index in range(4):
        assert stream.client_segment(seq_at(0, 10 + 2 * index), ACK, b"s") == b""
    assert stream.end is None
    stream.client_segment(seq_at(0, 30), ACK, b"s")
    assert stream.end is StreamEnd.LOST


def test_segment_beyond_the_bound_is_ignored() -> None:
    stream = opened(0, max_out_of_order_bytes=1000)
    assert stream.client_segment(seq_at(0, 5000), ACK | FIN, b"far away") == b""
    assert stream.buffered == 0 and stream.end is None
    assert stream.client_segment(seq_at(0, 0), ACK, b"near") == b"near"


def test_server_acknowledging_unseen_bytes_means_they_are_lost() -> None:
    stream = opened(10)
    stream.server_segment(SYN | ACK, seq_at(10, 0))
    assert stream.accepted
    assert stream.client_segment(seq_at(10, 0), ACK, b"abc") == b"abc"
    stream.server_segment(ACK, seq_at(10, 3))
    assert stream.end is None
    # Bytes 3..5 reached the server but not the capture (and are buffered after a gap).
    assert stream.client_segment(seq_at(10, 6), ACK, b"ghi") == b""
    stream.server_segment(ACK, seq_at(10, 9))
    assert stream.end is StreamEnd.LOST


def test_acknowledged_fin_is_not_a_loss() -> None:
    stream = opened(10)
    assert stream.client_segment(seq_at(10, 0), ACK | FIN, b"abc") == b"abc"
    stream.server_segment(ACK, seq_at(10, 4))
    assert stream.end is StreamEnd.FIN


def test_fin_acknowledged_before_the_bytes_in_front_of_it_is_a_loss() -> None:
    stream = opened(10)
    assert stream.client_segment(seq_at(10, 3), ACK | FIN, b"def") == b""
    stream.server_segment(ACK, seq_at(10, 7))
    assert stream.end is StreamEnd.LOST


def test_new_connection_detection() -> None:
    stream = opened(1000)
    assert not stream.is_new_connection(1000, SYN)  # a retransmitted SYN
    assert not stream.is_new_connection(5000, SYN | ACK)
    assert not stream.is_new_connection(5000, ACK)
    assert stream.is_new_connection(5000, SYN)
    joined = ClientStreamReassembler()
    joined.client_segment(42, ACK, b"data")
    assert joined.is_new_connection(42, SYN)


def test_syn_retransmission_does_not_restart_the_stream() -> None:
    stream = opened(1000)
    assert stream.client_segment(seq_at(1000, 0), ACK, b"ab") == b"ab"
    assert stream.client_segment(1000, SYN, b"") == b""
    assert stream.first_seq == 1001 and stream.delivered == 2


def test_data_in_the_syn_is_delivered() -> None:
    stream = ClientStreamReassembler()
    assert stream.client_segment(700, SYN, b"fast open") == b"fast open"
    assert stream.client_segment(710, ACK, b"!") == b"!"


def segment_plan(
    data: bytes, cuts: list[int], order: list[int], duplicates: list[int]
) -> list[tuple[int, bytes]]:
    """``data`` cut at ``cuts`` into (offset, bytes) segments, permuted by ``order`` (ranks),
    with the segments at ``duplicates`` (indexes) sent again, some merged with the next."""
    bounds = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    pieces = [(start, data[start:end]) for start, end in itertools.pairwise(bounds)]
    ranked = sorted(range(len(pieces)), key=lambda index: (order[index % len(order)], index))
    plan = [pieces[index] for index in ranked]
    for position, index in enumerate(duplicates):
        start, _ = pieces[index % len(pieces)]
        # Alternate plain duplicates with retransmissions that span several segments.
        length = (
            1 + (position * 7919) % (len(data) - start)
            if position % 2
            else len(pieces[index % len(pieces)][1])
        )
        plan.insert((index * 31) % (len(plan) + 1), (start, data[start : start + length]))
    return plan


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=40),
    order=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=40),
    duplicates=st.lists(st.integers(min_value=0, max_value=100), max_size=20),
    isn=st.one_of(
        st.integers(min_value=0, max_value=SEQ_SPACE - 1),
        st.integers(min_value=SEQ_SPACE - 3000, max_value=SEQ_SPACE - 1),
    ),
    with_fin=st.booleans(),
)
def test_any_segmentation_order_and_duplication_reassembles_the_original(
    data: bytes,
    cuts: list[int],
    order: list[int],
    duplicates: list[int],
    isn: int,
    with_fin: bool,
) -> None:
    stream = opened(isn)
    received = bytearray()
    plan = segment_plan(data, cuts, order, duplicates)
    final = max(start + len(piece) for start, piece in plan)
    for start, piece in plan:
        flags = ACK | (FIN if with_fin and start + len(piece) == final else 0)
        received += stream.client_segment(seq_at(isn, start), flags, piece)
    # Every duplicate comes after the segments it copies in some plans, so a FIN may be
    # seen more than once; the stream still ends exactly after the last byte.
    assert bytes(received) == data
    assert stream.buffered == 0
    assert stream.end is (StreamEnd.FIN if with_fin else None)


def test_random_reordering_with_drops_and_retransmissions() -> None:
    """A lossy channel model: each round some segments are lost, the sender retransmits
    from the first unacknowledged byte in different sizes, and the capture sees every
    transmission in a shuffled order."""
    rng = random.Random(20240601)
    data = rng.randbytes(200_000)
    isn = SEQ_SPACE - 70_000
    stream = opened(isn)
    received = bytearray()
    acked = 0
    while acked < len(data):
        window = []
        position = acked
        while position < min(len(data), acked + 40_000):
            size = rng.choice((536, 1448, 2896, 9000))
            window.append((position, data[position : position + size]))
            position += size
        rng.shuffle(window)
        for start, piece in window:
            if rng.random() < 0.1:
                continue  # lost before the capture
            received += stream.client_segment(seq_at(isn, start), ACK, piece)
        acked = stream.delivered
    assert bytes(received) == data


@pytest.mark.parametrize("flags", [ACK, ACK | FIN])
def test_empty_segments_deliver_nothing(flags: int) -> None:
    stream = opened(3)
    assert stream.client_segment(seq_at(3, 0), ACK, b"") == b""
    assert stream.client_segment(seq_at(3, 0), ACK, b"a") == b"a"
    assert stream.client_segment(seq_at(3, 1), flags, b"") == b""
    assert stream.end is (StreamEnd.FIN if flags & FIN else None)
