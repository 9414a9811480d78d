"""Read a pickled Celery result without unpickling it.

``pickle.loads`` on data from Redis runs whatever code the writer chose. This
module walks the opcode stream with :func:`pickletools.genops` and emulates a
small, inert subset: containers, scalars and the few constructors a result
meta can hold (``datetime``, ``timezone``, ``timedelta``, ``_codecs.encode``).
Nothing is imported and nothing is called; any other global becomes an
:class:`Opaque` placeholder.
"""

from __future__ import annotations

import datetime as dt
import pickletools
from dataclasses import dataclass
from typing import Any

# A result meta needs a few dozen opcodes; a huge pickle is skipped, not walked for seconds.
MAX_OPS = 200_000


class PickleUnreadable(ValueError):
    """The stream uses opcodes or shapes outside the inert subset."""


@dataclass(frozen=True, slots=True)
class Opaque:
    """A value we refuse to construct (a global, or the result of calling one)."""

    name: str


class _Mark:
    __slots__ = ()


_MARK = _Mark()

_STRINGS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_BYTES = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_INTS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT"}
_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}
_GETS = {"BINGET", "LONG_BINGET", "GET"}
_NOOPS = {"PROTO", "FRAME"}
_CONSTS: dict[str, Any] = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def _reduce(func: Any, args: Any) -> Any:
    """Rebuild the handful of harmless values Celery metas contain."""
    if not isinstance(func, Opaque) or not isinstance(args, tuple):
        return Opaque("call")
    if func.name == "_codecs encode" and len(args) == 2 and all(isinstance(a, str) for a in args):
        try:
            return args[0].encode(args[1])
        except (LookupError, UnicodeError):
            return Opaque(func.name)
    if func.name == "datetime timedelta" and all(isinstance(a, int) for a in args) and len(args) <= 3:
        try:
            return dt.timedelta(*args)
        except OverflowError:
            return Opaque(func.name)
    if func.name == "datetime timezone" and args and isinstance(args[0], dt.timedelta):
        try:
            return dt.timezone(args[0])
        except ValueError:
            return Opaque(func.name)
    if func.name == "datetime datetime" and args and isinstance(args[0], bytes) and len(args[0]) == 10:
        tz = args[1] if len(args) > 1 and isinstance(args[1], dt.tzinfo) else None
        try:
            # The 10-byte state datetime.__reduce__ produces.
            naive = dt.datetime.fromisoformat("2000-01-01").replace(
                year=args[0][0] * 256 + args[0][1],
                month=args[0][2],
                day=args[0][3],
                hour=args[0][4],
                minute=args[0][5],
                second=args[0][6],
                microsecond=int.from_bytes(args[0][7:10], "big"),
            )
        except ValueError:
            return Opaque(func.name)
        return naive.replace(tzinfo=tz)
    return Opaque(func.name)


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise PickleUnreadable("mark")


def read(data: bytes) -> Any:  # noqa: C901, PLR0915 - one flat opcode dispatch reads best
    """Return the inert value a pickle describes; raise :class:`PickleUnreadable`."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for count, (op, raw_arg, _pos) in enumerate(pickletools.genops(data)):
            arg: Any = raw_arg
            if count > MAX_OPS:
                raise PickleUnreadable("too many opcodes")
            name = op.name
            if name in _NOOPS:
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise PickleUnreadable("stack")
                return stack[0]
            if name in _STRINGS or name in _INTS:
                stack.append(arg)
            elif name in _BYTES:
                stack.append(bytes(arg))
            elif name in _CONSTS:
                stack.append(_CONSTS[name])
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in {"EMPTY_SET", "FROZENSET"}:
                if name == "FROZENSET":
                    _pop_mark(stack)
                stack.append(Opaque("set"))
            elif name == "MARK":
                stack.append(_MARK)
            elif name in {"TUPLE1", "TUPLE2", "TUPLE3"}:
                n = int(name[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif name == "TUPLE":
                stack.append(tuple(_pop_mark(stack)))
            elif name == "LIST":
                stack.append(_pop_mark(stack))
            elif name == "DICT":
                items = _pop_mark(stack)
                stack.append(dict(zip(items[::2], items[1::2], strict=True)))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = _pop_mark(stack)
                stack[-1].extend(items)
            elif name == "SETITEM":
                value = stack.pop()
                key = stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = _pop_mark(stack)
                stack[-1].update(zip(items[::2], items[1::2], strict=True))
            elif name == "ADDITEMS":
                _pop_mark(stack)
            elif name in _PUTS:
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in _GETS:
                stack.append(memo[arg])
            elif name == "GLOBAL":
                stack.append(Opaque(str(arg)))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(Opaque(f"{module} {attr}"))
            elif name == "REDUCE":
                args = stack.pop()
                stack.append(_reduce(stack.pop(), args))
            elif name in {"NEWOBJ", "NEWOBJ_EX"}:
                if name == "NEWOBJ_EX":
                    stack.pop()
                stack.pop()
                cls = stack.pop()
                stack.append(Opaque(getattr(cls, "name", "object")))
            elif name == "BUILD":
                stack.pop()  # state is never applied
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                _pop_mark(stack)
            elif name == "DUP":
                stack.append(stack[-1])
            else:  # PERSID, EXT*, INST, OBJ, NEXT_BUFFER ...: refuse
                raise PickleUnreadable(name)
    except PickleUnreadable:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, RecursionError, MemoryError) as exc:
        raise PickleUnreadable(type(exc).__name__) from exc
    raise PickleUnreadable("no STOP")
