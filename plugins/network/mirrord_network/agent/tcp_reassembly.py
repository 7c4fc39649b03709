"""Reassembly of the client→server byte stream of one TCP connection from captured segments.

Pure bookkeeping, no I/O: the mirror feeds it every segment it captures of one flow and
gets back the bytes that became deliverable in order. The rules:

- **Start.** A SYN fixes the stream's first byte at ISN + 1 (data carried by the SYN
  itself, TCP Fast Open, counts). Without a SYN (a connection already open when the capture
  started) the stream starts at the first data segment seen; bytes before that point are
  ignored, also when they arrive later.
- **Order.** Bytes are delivered strictly in sequence order. Segments ahead of the next
  expected byte wait in an out-of-order buffer until the gap before them is filled.
- **Duplicates and overlaps.** The first bytes received for a sequence number win: bytes
  already delivered cannot be taken back, so keeping the first copy of buffered bytes too
  is the only rule that treats every byte alike. (A conforming sender retransmits the same
  bytes anyway; the rule only decides which copy of inconsistent data a tool sees.)
- **Wraparound.** Sequence numbers are read relative to the next expected byte, modulo
  2**32, so streams of any length cross the wrap transparently (segments more than 2 GiB
  away from the next expected byte would be misread, which TCP's own windows rule out).
- **FIN.** Every byte up to the client's FIN is delivered, then the stream ends
  (:attr:`StreamEnd.FIN`); bytes beyond the FIN are ignored.
- **RST.** A reset from either side ends the stream at once (:attr:`StreamEnd.RESET`);
  buffered out-of-order bytes are dropped, as the server's kernel drops them.
- **Bounds.** At most ``max_out_of_order_bytes`` bytes in ``max_out_of_order_segments``
  pieces wait in the out-of-order buffer. Exceeding either means the gap before them has
  outlived any receive window the server could have offered, so it will never be filled:
  the stream ends with :attr:`StreamEnd.LOST` after the bytes before the gap. Segments
  starting beyond that bound from the next expected byte are ignored as out of window (the
  server's kernel discards them too).
- **Capture loss.** The server's acknowledgements (:meth:`server_segment`) tell which bytes
  the server has received. The capture sees a client segment before the server's kernel
  processes it, so an acknowledgement beyond the next byte we expect proves the capture
  missed bytes (a full capture buffer, a truncated frame) that will not be retransmitted:
  the stream ends with :attr:`StreamEnd.LOST` instead of waiting forever or delivering a
  stream with a hole.
"""

from __future__ import annotations

import bisect
import enum

FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10

SEQ_SPACE = 1 << 32
_SEQ_MASK = SEQ_SPACE - 1
_HALF_SPACE = 1 << 31

DEFAULT_MAX_OUT_OF_ORDER_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_OUT_OF_ORDER_SEGMENTS = 16384


class StreamEnd(enum.Enum):
    """Why a reassembled stream ended."""

    FIN = "fin"
    """The client finished sending; every byte up to its FIN was delivered."""
    RESET = "reset"
    """Either side reset the connection."""
    LOST = "lost"
    """Bytes the server received never reached the capture, or the out-of-order bound was
    exceeded: the stream cannot continue intact."""


class ClientStreamReassembler:
    """The client→server byte stream of one TCP connection, rebuilt from captured segments.

    Feed client→server segments to :meth:`client_segment` (it returns the bytes that became
    deliverable) and server→client segments to :meth:`server_segment` (acknowledgements,
    FIN and RST). Offsets (:attr:`delivered`) count bytes from the stream's first byte.
    """

    __slots__ = (
        "_base_seq",
        "_delivered",
        "_fin_offset",
        "_max_bytes",
        "_max_segments",
        "_next_seq",
        "_ooo_bytes",
        "_ooo_data",
        "_ooo_starts",
        "accepted",
        "end",
        "server_finished",
        "syn_seen",
    )

    def __init__(
        self,
        *,
        max_out_of_order_bytes: int = DEFAULT_MAX_OUT_OF_ORDER_BYTES,
        max_out_of_order_segments: int = DEFAULT_MAX_OUT_OF_ORDER_SEGMENTS,
    ) -> None:
        self._max_bytes = max_out_of_order_bytes
        self._max_segments = max_out_of_order_segments
        self._base_seq: int | None = None
        self._next_seq = 0
        self._delivered = 0
        self._fin_offset: int | None = None
        # Out-of-order pieces: sorted, non-overlapping, all beyond the next expected byte.
        self._ooo_starts: list[int] = []
        self._ooo_data: list[bytes] = []
        self._ooo_bytes = 0
        self.syn_seen = False
        """A SYN from the client fixed the stream's start."""
        self.accepted = False
        """The server answered the SYN (SYN-ACK): the connection is being established."""
        self.server_finished = False
        """The server sent its FIN."""
        self.end: StreamEnd | None = None
        """Why the stream ended; ``None`` while bytes may still come."""

    @property
    def started(self) -> bool:
        """The stream's first byte is known (from a SYN or the first data segment)."""
        return self._base_seq is not None

    @property
    def first_seq(self) -> int | None:
        """The sequence number of the stream's first byte (ISN + 1 after a SYN)."""
        return self._base_seq

    @property
    def delivered(self) -> int:
        """How many bytes have been delivered so far."""
        return self._delivered

    @property
    def buffered(self) -> int:
        """How many out-of-order bytes wait for a gap to be filled."""
        return self._ooo_bytes

    @property
    def closed(self) -> bool:
        """Nothing more will happen: the stream ended and, unless it was reset or lost, the
        server has finished too."""
        return self.end is not None and (self.end is not StreamEnd.FIN or self.server_finished)

    def is_new_connection(self, seq: int, flags: int) -> bool:
        """Whether a client segment opens a new connection on this flow's address pair: a SYN
        whose ISN differs from the one that started this stream (a client reusing its port).
        A retransmitted SYN is not new."""
        if flags & (SYN | ACK) != SYN:
            return False
        return not self.syn_seen or ((seq + 1) & _SEQ_MASK) != self._base_seq

    def client_segment(self, seq: int, flags: int, payload: bytes | memoryview) -> bytes:
        """Take one client→server segment; return the bytes that are now deliverable in
        order (often ``b""``). ``payload`` is copied if kept."""
        if self.end is not None:
            return b""
        if flags & RST:
            if self._base_seq is None or abs(self._relative(seq)) <= self._max_bytes:
                self._finish(StreamEnd.RESET)
            return b""
        if flags & SYN:
            if not self.syn_seen and self._delivered == 0 and not self._ooo_starts:
                self.syn_seen = True
                self._base_seq = self._next_seq = (seq + 1) & _SEQ_MASK
            # The SYN occupies one sequence number; data it carries (Fast Open) follows it.
            seq = (seq + 1) & _SEQ_MASK
        if self._base_seq is None:
            if not payload:
                return b""  # a bare ACK or FIN of a connection we join mid-stream
            self._base_seq = self._next_seq = seq
        start = self._delivered + self._relative(seq)
        end = start + len(payload)
        if start - self._delivered > self._max_bytes:
            return b""  # beyond any window the server can offer; its kernel drops it too
        if flags & FIN and self._fin_offset is None and end >= self._delivered:
            self._fin_offset = end
        if self._fin_offset is not None and end > self._fin_offset:
            end = self._fin_offset
        deliverable = b""
        if end > self._delivered:
            if start <= self._delivered and not self._ooo_starts:
                # The common case: the next bytes, nothing waiting.
                deliverable = bytes(payload[self._delivered - start : end - start])
                self._advance(len(deliverable))
            else:
                first = max(start, self._delivered)
                self._insert(bytes(payload[first - start : end - start]), first)
                deliverable = self._drain()
                if self._ooo_bytes > self._max_bytes or len(self._ooo_starts) > self._max_segments:
                    self._finish(StreamEnd.LOST)
        fin = self._fin_offset
        if self.end is None and fin is not None and self._delivered >= fin:
            self._finish(StreamEnd.FIN)
        return deliverable

    def server_segment(self, flags: int, ack: int) -> None:
        """Take one server→client segment: its acknowledgement, FIN or RST."""
        if flags & RST:
            if self.end is None:
                self._finish(StreamEnd.RESET)
            return
        if flags & SYN and flags & ACK:
            self.accepted = True
        if flags & FIN:
            self.server_finished = True
        if self.end is not None or self._base_seq is None or not flags & ACK:
            return
        acked = self._relative(ack)
        if self._fin_offset is not None and self._delivered + acked > self._fin_offset:
            acked -= 1  # the FIN's own sequence number
        if acked > 0:
            # The server has bytes the capture never saw; they will not be sent again.
            self._finish(StreamEnd.LOST)

    def _relative(self, seq: int) -> int:
        """Distance of ``seq`` from the next expected byte, in -2**31 .. 2**31 - 1."""
        distance = (seq - self._next_seq) & _SEQ_MASK
        return distance - SEQ_SPACE if distance >= _HALF_SPACE else distance

    def _drain(self) -> bytes:
        """Remove and return the buffered pieces that continue the delivered bytes."""
        starts, data = self._ooo_starts, self._ooo_data
        limit = self._fin_offset
        chunks: list[bytes] = []
        count = 0
        while count < len(starts) and starts[count] == self._delivered:
            piece = data[count]
            count += 1
            self._ooo_bytes -= len(piece)
            if limit is not None and self._delivered + len(piece) > limit:
                piece = piece[: limit - self._delivered]
            chunks.append(piece)
            self._advance(len(piece))
        del starts[:count], data[:count]
        return b"".join(chunks)

    def _advance(self, count: int) -> None:
        self._delivered += count
        self._next_seq = (self._next_seq + count) & _SEQ_MASK

    def _insert(self, payload: bytes, start: int) -> None:
        """Buffer the parts of ``payload`` (at offset ``start``, not before the next expected
        byte) that no buffered piece holds yet: the first bytes received win."""
        starts, data = self._ooo_starts, self._ooo_data
        end = start + len(payload)
        index = bisect.bisect_right(starts, start)
        position = start
        if index > 0:
            position = max(position, starts[index - 1] + len(data[index - 1]))
        pieces: list[tuple[int, int, bytes]] = []
        while position < end:
            if index < len(starts) and starts[index] < end:
                if starts[index] > position:
                    piece = payload[position - start : starts[index] - start]
                    pieces.append((index, position, piece))
                position = max(position, starts[index] + len(data[index]))
                index += 1
            else:
                pieces.append((index, position, payload[position - start :]))
                position = end
        # Insert from the back so that the earlier indexes stay valid.
        for at, piece_start, piece in reversed(pieces):
            starts.insert(at, piece_start)
            data.insert(at, piece)
            self._ooo_bytes += len(piece)

    def _finish(self, reason: StreamEnd) -> None:
        self.end = reason
        self._ooo_starts.clear()
        self._ooo_data.clear()
        self._ooo_bytes = 0
