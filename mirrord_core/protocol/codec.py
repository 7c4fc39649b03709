"""Messages ↔ msgpack bodies: a strict cattrs converter plus the registry's tag dispatch.

On the wire a message is a msgpack map ``{"t": tag, field: value, …}``. Decoding is strict
because the bytes come from another process: a wrong field type, a missing field, an extra
field, an unknown tag or trailing bytes are all :class:`MalformedMessage`, never a silently
"fixed" value (cattrs on its own would turn ``"5"`` into ``5`` or ``"ab"`` into
``["a", "b"]``).

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``None``,
``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``frozenset[X]``, ``dict[K, V]``, unions
(``X | None`` included), ``Literal``, enums, ``Any``, nested attrs classes, and
:class:`Message` (any registered message, chosen by its tag) or a specific message class.
"""

from __future__ import annotations

import enum
import functools
import struct
import threading
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
import msgpack
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn
from cattrs.v import format_exception

from mirrord_core.protocol.errors import (
    EncodeError,
    FrameTooLarge,
    MalformedMessage,
    UnknownMessageType,
)
from mirrord_core.protocol.framing import MAX_FRAME_SIZE, encode_header
from mirrord_core.protocol.messages import MAX_ID, StreamData
from mirrord_core.protocol.registry import DEFAULT_REGISTRY, TAG_KEY, Message, MessageRegistry

_BIN8 = struct.Struct(">BB")
_BIN16 = struct.Struct(">BH")
_BIN32 = struct.Struct(">BI")
# msgpack of ``{"t": "stream_data", "stream_id": …, "data": …}`` around the two values, in
# the order the converter unstructures the fields (``Codec.encode_stream_data_frames``).
_STREAM_DATA_HEAD = (
    b"\x83" + msgpack.packb(TAG_KEY) + msgpack.packb(StreamData.TAG) + msgpack.packb("stream_id")
)
_DATA_KEY = msgpack.packb("data")
# msgpack's unsigned integer and bin markers, by their first byte.
_UINTS = {
    0xCC: struct.Struct(">B"),
    0xCD: struct.Struct(">H"),
    0xCE: struct.Struct(">I"),
    0xCF: struct.Struct(">Q"),
}
_BINS = {0xC4: struct.Struct(">B"), 0xC5: struct.Struct(">H"), 0xC6: struct.Struct(">I")}

#: How deeply messages may nest inside each other (``Request`` → payload → …).
MAX_MESSAGE_NESTING = 16


class WireValueError(ValueError):
    """A decoded value does not fit its field; the message is the user-facing explanation."""


_TYPE_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    bytes: "bytes",
    list: "an array",
    dict: "a map",
    type(None): "nil",
}


def describe(value: object) -> str:
    """Name the msgpack kind of a decoded value for error messages."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _strict_exact(expected: type, what: str) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _type: Any) -> Any:
        # type() rather than isinstance(): bool is an int subclass and must not pass as one.
        if type(value) is not expected:
            raise WireValueError(f"expected {what}, got {describe(value)}")
        return value

    return structure


def _structure_float(value: Any, _type: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        # msgpack keeps 1.0 and 1 apart; an integer for a float field loses nothing.
        return float(value)
    raise WireValueError(f"expected a float, got {describe(value)}")


def _structure_none(value: Any, _type: Any) -> None:
    if value is not None:
        raise WireValueError(f"expected nil, got {describe(value)}")
    return None


def _origin(type_: Any) -> Any:
    return typing.get_origin(type_)


def _is_union(type_: Any) -> bool:
    return _origin(type_) in (typing.Union, types.UnionType)


def _is_literal(type_: Any) -> bool:
    return _origin(type_) is typing.Literal


def _is_enum(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, enum.Enum)


def _is_message(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, Message)


def _is_plain_attrs(type_: Any) -> bool:
    return isinstance(type_, type) and attrs.has(type_) and not issubclass(type_, Message)


def _is_list(type_: Any) -> bool:
    return type_ is list or _origin(type_) is list


def _is_tuple(type_: Any) -> bool:
    return type_ is tuple or _origin(type_) is tuple


def _is_frozenset(type_: Any) -> bool:
    return type_ is frozenset or _origin(type_) is frozenset


def _is_dict(type_: Any) -> bool:
    return type_ in (dict, Mapping) or _origin(type_) in (dict, Mapping)


def _item_error(where: str, exc: Exception) -> WireValueError:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, cattrs.BaseValidationError):
        detail = "; ".join(cattrs.transform_error(exc, format_exception=_format_exception))
    return WireValueError(f"{where}: {detail}")


def _format_exception(exc: BaseException, type_: type | None) -> str:
    # Our hooks and attrs validators word their errors for humans; keep those words.
    if isinstance(exc, WireValueError | MalformedMessage | ValueError) and str(exc):
        return str(exc)
    return format_exception(exc, type_)


class _NestingGuard(threading.local):
    depth = 0


def make_converter(registry: MessageRegistry) -> cattrs.Converter:
    """Build the strict converter for ``registry``'s messages.

    New classes registered later are picked up: hooks for a class are generated the first
    time it is encoded or decoded, and :class:`Message`-typed fields look tags up at decode
    time.
    """
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    nesting = _NestingGuard()

    converter.register_structure_hook(int, _strict_exact(int, "an integer"))
    converter.register_structure_hook(bool, _strict_exact(bool, "a boolean"))
    converter.register_structure_hook(str, _strict_exact(str, "a string"))
    converter.register_structure_hook(bytes, _strict_exact(bytes, "bytes"))
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(type(None), _structure_none)
    converter.register_structure_hook(Any, lambda value, _type: value)

    def enum_hook(enum_type: type[enum.Enum]) -> Callable[[Any, Any], Any]:
        members = list(enum_type)

        def structure(value: Any, _type: Any) -> Any:
            for member in members:
                if type(member.value) is type(value) and member.value == value:
                    return member
            choices = ", ".join(repr(member.value) for member in members)
            raise WireValueError(f"expected one of {choices}, got {value!r}")

        return structure

    def literal_hook(literal: Any) -> Callable[[Any, Any], Any]:
        allowed = typing.get_args(literal)

        def structure(value: Any, _type: Any) -> Any:
            for choice in allowed:
                if type(choice) is type(value) and choice == value:
                    return value
            choices = ", ".join(repr(choice) for choice in allowed)
            raise WireValueError(f"expected one of {choices}, got {value!r}")

        return structure

    def union_hook(union: Any) -> Callable[[Any, Any], Any]:
        arms = typing.get_args(union)
        if len(arms) == 2 and type(None) in arms:
            (arm,) = (arm for arm in arms if arm is not type(None))
            arm_hook = converter.get_structure_hook(arm)
            return lambda value, _type: None if value is None else arm_hook(value, arm)
        hooks = [(arm, converter.get_structure_hook(arm)) for arm in arms]

        def structure(value: Any, _type: Any) -> Any:
            # Strict arm hooks make "first arm that accepts the value" unambiguous enough:
            # no arm converts, so 1 never becomes "1" or True.
            problems = []
            for arm, hook in hooks:
                try:
                    return hook(value, arm)
                except Exception as exc:
                    problems.append(str(_item_error(_type_name(arm), exc)))
            raise WireValueError(f"no type of the union accepts the value ({'; '.join(problems)})")

        return structure

    def list_hook(list_type: Any) -> Callable[[Any, Any], Any]:
        (item_type,) = typing.get_args(list_type) or (Any,)
        item_hook = converter.get_structure_hook(item_type)

        def structure(value: Any, _type: Any) -> list[Any]:
            if type(value) is not list:
                raise WireValueError(f"expected an array, got {describe(value)}")
            result = []
            for index, item in enumerate(value):
                try:
                    result.append(item_hook(item, item_type))
                except Exception as exc:
                    raise _item_error(f"item {index}", exc) from None
            return result

        return structure

    def frozenset_hook(set_type: Any) -> Callable[[Any, Any], Any]:
        args = typing.get_args(set_type)
        items = list_hook(list[args[0] if args else Any])  # type: ignore[misc]
        return lambda value, _type: frozenset(items(value, _type))

    def tuple_hook(tuple_type: Any) -> Callable[[Any, Any], Any]:
        args = typing.get_args(tuple_type)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            items = list_hook(list[args[0] if args else Any])  # type: ignore[misc]
            return lambda value, _type: tuple(items(value, _type))
        item_hooks = [(arg, converter.get_structure_hook(arg)) for arg in args]

        def structure(value: Any, _type: Any) -> tuple[Any, ...]:
            if type(value) is not list:
                raise WireValueError(f"expected an array, got {describe(value)}")
            if len(value) != len(item_hooks):
                raise WireValueError(
                    f"expected an array of {len(item_hooks)} items, got {len(value)}"
                )
            result = []
            for index, (item, (arg, hook)) in enumerate(zip(value, item_hooks, strict=True)):
                try:
                    result.append(hook(item, arg))
                except Exception as exc:
                    raise _item_error(f"item {index}", exc) from None
            return tuple(result)

        return structure

    def dict_hook(dict_type: Any) -> Callable[[Any, Any], Any]:
        key_type, value_type = typing.get_args(dict_type) or (Any, Any)
        key_hook = converter.get_structure_hook(key_type)
        value_hook = converter.get_structure_hook(value_type)

        def structure(value: Any, _type: Any) -> dict[Any, Any]:
            if type(value) is not dict:
                raise WireValueError(f"expected a map, got {describe(value)}")
            result = {}
            for key, item in value.items():
                try:
                    structured_key = key_hook(key, key_type)
                except Exception as exc:
                    raise _item_error(f"key {key!r}", exc) from None
                try:
                    result[structured_key] = value_hook(item, value_type)
                except Exception as exc:
                    raise _item_error(f"value of {key!r}", exc) from None
            return result

        return structure

    def plain_attrs_hook(cls: type) -> Callable[[Any, Any], Any]:
        base = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)

        def structure(value: Any, _type: Any) -> Any:
            if type(value) is not dict:
                raise WireValueError(f"expected a map for {cls.__name__}, got {describe(value)}")
            return base(value, cls)

        return structure

    field_structurers: dict[type[Message], Callable[[Any, Any], Any]] = {}

    def structure_registered(value: dict[str, Any], cls: type[Message]) -> Message:
        if nesting.depth >= MAX_MESSAGE_NESTING:
            raise WireValueError(f"messages nested more than {MAX_MESSAGE_NESTING} levels deep")
        structure_fields = field_structurers.get(cls)
        if structure_fields is None:
            structure_fields = make_dict_structure_fn(
                cls, converter, _cattrs_forbid_extra_keys=True
            )
            field_structurers[cls] = structure_fields
        fields = dict(value)
        del fields[TAG_KEY]
        nesting.depth += 1
        try:
            return structure_fields(fields, cls)
        finally:
            nesting.depth -= 1

    def message_hook(cls: type[Message]) -> Callable[[Any, Any], Any]:
        if cls is Message:

            def structure_any(value: Any, _type: Any) -> Message:
                tag = _message_tag(value)
                found = registry.get(tag)
                if found is None:
                    raise UnknownMessageType(tag)
                return structure_registered(value, found)

            return structure_any

        def structure_one(value: Any, _type: Any) -> Message:
            tag = _message_tag(value)
            if tag != cls.TAG:
                raise WireValueError(f"expected a {cls.TAG!r} message, got {tag!r}")
            return structure_registered(value, cls)

        return structure_one

    # Later registrations win in cattrs, so the generic predicates come first.
    converter.register_structure_hook_factory(_is_plain_attrs, plain_attrs_hook)
    converter.register_structure_hook_factory(_is_message, message_hook)
    converter.register_structure_hook_factory(_is_enum, enum_hook)
    converter.register_structure_hook_factory(_is_literal, literal_hook)
    converter.register_structure_hook_factory(_is_list, list_hook)
    converter.register_structure_hook_factory(_is_frozenset, frozenset_hook)
    converter.register_structure_hook_factory(_is_tuple, tuple_hook)
    converter.register_structure_hook_factory(_is_dict, dict_hook)
    converter.register_structure_hook_factory(_is_union, union_hook)

    def unstructure_message_hook(cls: type[Message]) -> Callable[[Any], Any]:
        if cls is Message:

            def unstructure_any(obj: Any) -> Any:
                if not isinstance(obj, Message):
                    raise EncodeError(f"expected a message, got {type(obj).__name__}")
                return converter.unstructure(obj, unstructure_as=type(obj))

            return unstructure_any

        base = make_dict_unstructure_fn(cls, converter)

        def unstructure_one(obj: Any) -> dict[str, Any]:
            if registry.get(cls.TAG) is not cls:
                raise EncodeError(f"message class {cls.__qualname__} is not registered")
            return {TAG_KEY: cls.TAG, **base(obj)}

        return unstructure_one

    converter.register_unstructure_hook_factory(_is_message, unstructure_message_hook)
    converter.register_unstructure_hook_func(_is_enum, lambda obj: obj.value)
    # Arrays as lists: the unstructured form is exactly what msgpack hands back on decode.
    converter.register_unstructure_hook_func(
        lambda t: _is_frozenset(t) or _is_tuple(t),
        lambda obj: [converter.unstructure(item) for item in obj],
    )
    return converter


@functools.lru_cache(maxsize=1024)
def _stream_data_map_head(stream_id: int) -> bytes:
    return _STREAM_DATA_HEAD + msgpack.packb(stream_id) + _DATA_KEY


def _stream_data_head(stream_id: int, size: int) -> bytes:
    """Length prefix and msgpack of a ``StreamData`` frame, up to its ``size`` data bytes."""
    if size < 0x100:
        bin_header = _BIN8.pack(0xC4, size)
    elif size < 0x10000:
        bin_header = _BIN16.pack(0xC5, size)
    else:
        bin_header = _BIN32.pack(0xC6, size)
    head = _stream_data_map_head(stream_id)
    return encode_header(len(head) + len(bin_header) + size) + head + bin_header


def _pieces(view: memoryview, chunk: int) -> list[memoryview]:
    """``view`` in consecutive slices of at most ``chunk`` bytes (one empty slice if empty)."""
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    return [view[start : start + chunk] for start in range(0, len(view), chunk)] or [view]


def _message_tag(value: Any) -> str:
    if type(value) is not dict:
        raise WireValueError(f"expected a message (a map), got {describe(value)}")
    if TAG_KEY not in value:
        raise WireValueError(f"message has no type tag (key {TAG_KEY!r})")
    tag = value[TAG_KEY]
    if type(tag) is not str:
        raise WireValueError(f"message type tag must be a string, got {describe(tag)}")
    return tag


def _type_name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or repr(type_)


def _reject_ext(code: int, data: bytes) -> Any:
    raise WireValueError(f"msgpack extension type {code} is not allowed")


class Codec:
    """Encodes messages to msgpack bodies/frames and decodes them back, strictly."""

    def __init__(self, registry: MessageRegistry | None = None) -> None:
        self.registry = DEFAULT_REGISTRY if registry is None else registry
        self.converter = make_converter(self.registry)
        self._stream_data_registered = False

    def unstructure(self, message: Message) -> dict[str, Any]:
        """The message as a plain map ``{"t": tag, …}`` (before msgpack)."""
        if not isinstance(message, Message):
            raise EncodeError(f"expected a message, got {type(message).__name__}")
        try:
            return self.converter.unstructure(message, unstructure_as=Message)
        except EncodeError:
            raise
        except Exception as exc:
            raise EncodeError(f"cannot encode {type(message).__name__}: {exc}") from exc

    def structure(self, value: Any) -> Message:
        """A message from a plain decoded map; :class:`MalformedMessage` if it is not one."""
        tag = value.get(TAG_KEY) if type(value) is dict else None
        try:
            return self.converter.structure(value, Message)
        except MalformedMessage:
            raise
        except Exception as exc:
            raise MalformedMessage(_explain(tag, exc)) from None

    def encode(self, message: Message) -> bytes:
        """The msgpack body of ``message``."""
        plain = self.unstructure(message)
        try:
            return msgpack.packb(plain, use_bin_type=True)
        except Exception as exc:
            raise EncodeError(f"cannot encode {type(message).__name__}: {exc}") from exc

    def encode_frame(self, message: Message, max_size: int = MAX_FRAME_SIZE) -> bytes:
        """A complete frame for ``message``; :class:`FrameTooLarge` if it is too big."""
        body = self.encode(message)
        if len(body) > max_size:
            raise FrameTooLarge(len(body), max_size)
        return encode_header(len(body), max_size) + body

    def _stream_data_is_registered(self) -> bool:
        # A tag never changes its class once registered, so a yes can be remembered.
        if not self._stream_data_registered:
            self._stream_data_registered = self.registry.get(StreamData.TAG) is StreamData
        return self._stream_data_registered

    def encode_stream_data_frames(
        self, stream_id: int, data: bytes | bytearray | memoryview, chunk: int
    ) -> bytes:
        """Frames of ``StreamData(stream_id=stream_id, data=…)`` for ``data`` cut into pieces
        of at most ``chunk`` bytes, back to back in one ``bytes``.

        Byte for byte what :meth:`encode_frame` gives for each of those messages.
        """
        return b"".join(self.stream_data_frame_parts(stream_id, data, chunk))

    def stream_data_frame_parts(
        self, stream_id: int, data: bytes | bytearray | memoryview, chunk: int
    ) -> list[bytes | memoryview]:
        """:meth:`encode_stream_data_frames` as a list of buffers to write in order.

        The data itself is not copied: the list holds slices of ``data`` between the small
        headers, so the frames can go to the socket with one gathering write. The slices
        are only valid as long as ``data`` is unchanged.
        """
        if not self._stream_data_fast_path(stream_id):
            # Let the general path word the error.
            return [
                self.encode_frame(StreamData(stream_id=stream_id, data=bytes(piece)))
                for piece in _pieces(memoryview(data), chunk)
            ]
        parts: list[bytes | memoryview] = []
        for piece in _pieces(memoryview(data), chunk):
            parts += (_stream_data_head(stream_id, len(piece)), piece)
        return parts

    def stream_data_frame_head(self, stream_id: int, size: int) -> bytes:
        """Everything of the ``StreamData`` frame for ``size`` bytes of data on stream
        ``stream_id`` that comes before the data (length prefix and msgpack).

        :class:`EncodeError` (or :class:`FrameTooLarge`) for what :meth:`encode_frame`
        would refuse.
        """
        if not self._stream_data_fast_path(stream_id):
            frame = self.encode_frame(StreamData(stream_id=stream_id, data=bytes(size)))
            return frame[: len(frame) - size]
        return _stream_data_head(stream_id, size)

    def _stream_data_fast_path(self, stream_id: int) -> bool:
        return (
            type(stream_id) is int
            and 1 <= stream_id <= MAX_ID
            and self._stream_data_is_registered()
        )

    def stream_data_payload(self, body: bytes | memoryview) -> tuple[int, memoryview] | None:
        """``(stream_id, data)`` of a ``stream_data`` frame body laid out exactly as
        :meth:`stream_data_frame_parts` writes it, with ``data`` a read-only view into
        ``body`` (nothing copied); ``None`` for any other body (use :meth:`decode`).

        A body it accepts is one :meth:`decode` turns into the same ``StreamData``.
        """
        if not isinstance(body, bytes):
            body = memoryview(body).toreadonly()
        size = len(body)
        position = len(_STREAM_DATA_HEAD)
        if size < position + 1 + len(_DATA_KEY) + 2 or body[:position] != _STREAM_DATA_HEAD:
            return None
        marker = body[position]
        integer = _UINTS.get(marker)
        if marker < 0x80:
            stream_id = marker
            position += 1
        elif integer is not None and size >= position + 1 + integer.size:
            (stream_id,) = integer.unpack_from(body, position + 1)
            position += 1 + integer.size
        else:
            return None
        end_of_key = position + len(_DATA_KEY)
        if body[position:end_of_key] != _DATA_KEY or end_of_key >= size:
            return None
        length = _BINS.get(body[end_of_key])
        if length is None or size < end_of_key + 1 + length.size:
            return None
        (data_size,) = length.unpack_from(body, end_of_key + 1)
        data_start = end_of_key + 1 + length.size
        if (
            data_start + data_size != size
            or not 1 <= stream_id <= MAX_ID
            or not self._stream_data_is_registered()
        ):
            return None
        return stream_id, memoryview(body)[data_start:]

    def decode(self, body: bytes) -> Message:
        """The message in a frame body; :class:`MalformedMessage` for anything invalid."""
        value = self.unpack(body)
        # The bulk path: a well-formed ``stream_data`` is built directly (the same checks as
        # the converter's, which still handles every other case and words every error).
        if (
            type(value) is dict
            and len(value) == 3
            and value.get(TAG_KEY) == "stream_data"
            and type(data := value.get("data")) is bytes
            and type(stream_id := value.get("stream_id")) is int
            and 1 <= stream_id <= MAX_ID
            and self._stream_data_is_registered()
        ):
            return StreamData(stream_id=stream_id, data=data)
        return self.structure(value)

    @staticmethod
    def unpack(body: bytes) -> Any:
        """The raw msgpack value of a frame body (exactly one object, no extension types)."""
        try:
            return msgpack.unpackb(
                body,
                raw=False,
                use_list=True,
                strict_map_key=True,
                ext_hook=_reject_ext,
                timestamp=0,
            )
        except Exception as exc:
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, msgpack.StackError):
                detail = "values nested too deeply"
            raise MalformedMessage(f"frame is not valid msgpack: {detail}") from None


def _explain(tag: Any, exc: Exception) -> str:
    if isinstance(exc, UnknownMessageType | WireValueError):
        detail = str(exc)
    elif isinstance(exc, cattrs.BaseValidationError):
        detail = "; ".join(cattrs.transform_error(exc, format_exception=_format_exception))
    elif isinstance(exc, RecursionError):
        detail = "values nested too deeply"
    else:
        detail = str(exc) or type(exc).__name__
    if isinstance(tag, str):
        return f"invalid {tag!r} message: {detail}"
    return f"invalid message: {detail}"


@functools.cache
def default_codec() -> Codec:
    """The codec of :data:`DEFAULT_REGISTRY`, shared so hooks are generated once per process.

    Sharing is safe: classes registered later get their hooks on first use.
    """
    return Codec()
