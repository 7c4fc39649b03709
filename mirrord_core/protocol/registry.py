"""The message base class and the registry mapping type tags to message classes.

Core messages register themselves in :data:`DEFAULT_REGISTRY` on import; plugins add their
own request/response/stream payloads with :func:`register_message`::

    @register_message
    @attrs.frozen(kw_only=True)
    class ReadFile(Message):
        TAG = "fs.read_file"
        path: str

Tags are unique per registry. Core tags have no dot; plugin tags should be
``"<plugin>.<name>"`` so two plugins cannot collide by accident.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from typing import ClassVar, TypeVar

import attrs

from mirrord_core.protocol.errors import DuplicateMessageTag, InvalidMessageClass

#: The map key holding the type tag in every encoded message.
TAG_KEY = "t"

_TAG_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

MessageT = TypeVar("MessageT", bound="Message")


class Message:
    """Base class of every wire message.

    Subclasses are ``@attrs.frozen(kw_only=True)`` classes with a class attribute ``TAG``
    (the type tag on the wire) and are registered with :func:`register_message`.
    """

    __slots__ = ()

    TAG: ClassVar[str]


def _is_frozen(cls: type) -> bool:
    # attrs has no public "is frozen" query; frozen classes install its _frozen_setattrs.
    return getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs"


def validate_message_class(cls: type) -> None:
    """Raise :class:`InvalidMessageClass` unless ``cls`` can be a wire message."""
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        raise InvalidMessageClass(f"{cls!r} is not a subclass of Message")
    name = cls.__qualname__
    if not attrs.has(cls):
        raise InvalidMessageClass(f"message class {name} is not an attrs class")
    tag = cls.__dict__.get("TAG")
    if not isinstance(tag, str) or not _TAG_PATTERN.fullmatch(tag):
        raise InvalidMessageClass(
            f"message class {name} needs its own TAG: 1-64 characters of letters, digits, "
            f"'_', '.', ':' or '-' (got {tag!r})"
        )
    if not _is_frozen(cls):
        raise InvalidMessageClass(f"message class {name} must be @attrs.frozen")
    try:
        fields = attrs.fields(attrs.resolve_types(cls))
    except Exception as exc:
        raise InvalidMessageClass(
            f"message class {name}: cannot resolve field types: {exc}"
        ) from exc
    for field in fields:
        if field.name == TAG_KEY:
            raise InvalidMessageClass(
                f"message class {name}: field name {TAG_KEY!r} is reserved for the type tag"
            )
        if not field.kw_only:
            raise InvalidMessageClass(f"message class {name} must be kw_only")
        if not field.init:
            raise InvalidMessageClass(f"message class {name}: field {field.name} has init=False")


class MessageRegistry:
    """Type tag → message class, for one codec.

    Registration is thread-safe and idempotent for the same class; a different class under
    an existing tag raises :class:`DuplicateMessageTag`.
    """

    def __init__(self, messages: Iterable[type[Message]] = ()) -> None:
        self._by_tag: dict[str, type[Message]] = {}
        self._lock = threading.Lock()
        for cls in messages:
            self.register(cls)

    def register(self, cls: type[MessageT]) -> type[MessageT]:
        """Add ``cls`` under its ``TAG``; returns ``cls`` so it works as a decorator."""
        validate_message_class(cls)
        with self._lock:
            existing = self._by_tag.get(cls.TAG)
            if existing is not None and existing is not cls:
                raise DuplicateMessageTag(
                    f"message tag {cls.TAG!r} of {cls.__module__}.{cls.__qualname__} is already "
                    f"used by {existing.__module__}.{existing.__qualname__}"
                )
            self._by_tag[cls.TAG] = cls
        return cls

    def get(self, tag: str) -> type[Message] | None:
        """The class registered under ``tag``, or ``None``."""
        return self._by_tag.get(tag)

    def copy(self) -> MessageRegistry:
        """An independent registry holding the same classes (tests, isolated plugin sets)."""
        return MessageRegistry(self._by_tag.values())

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_tag
        return isinstance(item, type) and self._by_tag.get(getattr(item, "TAG", None)) is item

    def __iter__(self) -> Iterator[type[Message]]:
        return iter(list(self._by_tag.values()))

    def __len__(self) -> int:
        return len(self._by_tag)


#: The process-wide registry: core messages plus whatever plugins register.
DEFAULT_REGISTRY = MessageRegistry()


def register_message(cls: type[MessageT]) -> type[MessageT]:
    """Register a message class in :data:`DEFAULT_REGISTRY` (usable as a decorator)."""
    return DEFAULT_REGISTRY.register(cls)
