"""What a graph's code reaches: the user's modules to ship by value, and a fingerprint of it all.

A graph's functions call helpers, read module constants and take or return models that may live
in other modules of the user's project. An executor has none of the user's source tree, so
every module of the project that the code reaches travels with it by value (cloudpickle's
``register_pickle_by_value``), transitively. Installed packages and the standard library stay
references: the executor's image provides them.

The same walk gives each function a fingerprint of everything it reaches (its bytecode, the
helpers', the constants', the models' schemas, the annotations), so that changing only a helper
or a constant changes the graph's version. A fingerprint never depends on memory addresses or
on the order in which functions were walked, so the same code gives the same version in every
process.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
import types
import typing
from collections.abc import Iterable
from typing import Any

from .functions import SPEC_ATTRIBUTE

__all__ = ["CodeClosure", "is_user_module"]

_CONSTANTS = (int, float, complex, str, bytes, bool, type(None), range)
_MAX_CONSTANT_REPR = 1 << 20


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def is_user_module(module: types.ModuleType) -> bool:
    """A module of the user's project: neither the SDK, nor installed, nor the standard library
    (``__main__`` counts, although cloudpickle ships it by value on its own)."""
    name = module.__name__
    if name == "__main__":
        return True
    if name == "builtins" or name == "indexify" or name.startswith("indexify."):
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    return not path.startswith(_library_roots())


class CodeClosure:
    """Walks code objects; :attr:`modules` collects every user module reached so far."""

    def __init__(self) -> None:
        self.modules: dict[str, types.ModuleType] = {}

    def fingerprint(self, node: Any, extra: Iterable[Any] = ()) -> str:
        """A hex digest of everything ``node`` (a function or class) and ``extra`` (its
        accumulator, annotations) reach. Other nodes of a graph it names (a router's targets)
        count by name: their code has fingerprints of their own."""
        walk = _Walk(self, node)
        walk.visit(node)
        for item in extra:
            walk.visit(item)
        return walk.digest.hexdigest()

    def shipped_modules(self) -> list[types.ModuleType]:
        """The user modules to pickle by value (``__main__`` goes by value anyway)."""
        return [m for name, m in sorted(self.modules.items()) if name != "__main__"]


class _Walk:
    def __init__(self, closure: CodeClosure, node: Any) -> None:
        self.closure = closure
        self.node = node
        self.digest = hashlib.sha256()
        self.seen: set[int] = set()

    def add(self, *parts: str) -> None:
        for part in parts:
            self.digest.update(part.encode(errors="replace"))
            self.digest.update(b"\0")

    def _is_user_code(self, obj: Any) -> bool:
        """Code of the user's project: from a user module, or from a module this process
        does not have (code that came by value, as on an executor)."""
        name = getattr(obj, "__module__", None) or ""
        module = sys.modules.get(name)
        if module is None:
            return bool(name)
        if not is_user_module(module):
            return False
        self.closure.modules.setdefault(module.__name__, module)
        return True

    def visit(self, obj: Any) -> None:
        if isinstance(obj, _CONSTANTS):
            text = repr(obj)
            self.add("const", text if len(text) < _MAX_CONSTANT_REPR else str(hash(text)))
            return
        if id(obj) in self.seen:
            self.add("seen", _name_of(obj))
            return
        self.seen.add(id(obj))
        spec = getattr(obj, SPEC_ATTRIBUTE, None)
        if spec is not None and obj is not self.node and isinstance(obj, type | types.FunctionType):
            self.add("node", str(getattr(spec, "name", "")))
            return
        if isinstance(obj, types.FunctionType):
            self._function(obj)
        elif isinstance(obj, (staticmethod, classmethod)):
            self.visit(obj.__func__)
        elif isinstance(obj, property):
            for accessor in (obj.fget, obj.fset, obj.fdel):
                if accessor is not None:
                    self.visit(accessor)
        elif isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, types.ModuleType):
            self.add("module", obj.__name__)
            if is_user_module(obj):
                self.closure.modules.setdefault(obj.__name__, obj)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
            self.add(type(obj).__name__, str(len(items)))
            for item in items:
                self.visit(item)
        elif isinstance(obj, dict):
            self.add("dict", str(len(obj)))
            for key in sorted(obj, key=repr):
                self.visit(key)
                self.visit(obj[key])
        elif typing.get_origin(obj) is not None:  # list[Model], Optional[X], Annotated...
            self.add("generic", repr(typing.get_origin(obj)))
            for arg in typing.get_args(obj):
                self.visit(arg)
        else:
            self._instance(obj)

    def _function(self, fn: types.FunctionType) -> None:
        self.add("function", _name_of(fn))
        if not self._is_user_code(fn):
            return  # installed code: its name is enough, the image provides it
        names: set[str] = set()
        self._code(fn.__code__, names)
        for name in sorted(names):
            if name in fn.__globals__:
                value = fn.__globals__[name]
                self.add("global", name)
                self.visit(value)
                if isinstance(value, types.ModuleType) and is_user_module(value):
                    self._module_attributes(value, names)
        for cell in fn.__closure__ or ():
            try:
                self.visit(cell.cell_contents)
            except ValueError:  # an empty cell
                self.add("empty-cell")
        for default in (fn.__defaults__ or ()) + tuple((fn.__kwdefaults__ or {}).values()):
            self.visit(default)
        for name, hint in sorted(_hints(fn).items()):
            self.add("hint", name)
            self.visit(hint)

    def _module_attributes(self, module: types.ModuleType, names: set[str]) -> None:
        """``helpers.double(x)``: the attributes of a user module the code names."""
        attributes = vars(module)
        for name in sorted(names & attributes.keys()):
            self.add("attribute", module.__name__, name)
            self.visit(attributes[name])

    def _code(self, code: types.CodeType, names: set[str]) -> None:
        self.digest.update(code.co_code)
        self.add(repr(code.co_names))
        names.update(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const, names)
            else:
                self.visit(const)

    def _class(self, cls: type) -> None:
        self.add("class", _name_of(cls))
        if not self._is_user_code(cls):
            return
        for base in cls.__bases__:
            self.visit(base)
        schema = getattr(cls, "model_json_schema", None)
        if callable(schema):  # a pydantic model: its fields, types and defaults
            try:
                self.add("schema", repr(schema()))
            except Exception as exc:  # a model pydantic cannot describe: its name says enough
                self.add("schema-error", type(exc).__name__)
        for name, hint in sorted(_hints(cls).items()):
            self.add("hint", name)
            self.visit(hint)
        for name in sorted(vars(cls)):
            if name.startswith("__") and name.endswith("__") and name not in _DUNDERS_OF_NOTE:
                continue
            self.add("member", name)
            self.visit(vars(cls)[name])

    def _instance(self, obj: Any) -> None:
        kind = type(obj)
        self.add("instance", _name_of(kind))
        self.visit(kind)
        dump = getattr(obj, "model_dump_json", None)
        if callable(dump):
            try:
                self.add(dump())
                return
            except Exception:
                pass
        text = repr(obj)
        if " at 0x" not in text:  # a default repr names a memory address: not content
            self.add(text[:_MAX_CONSTANT_REPR])


_DUNDERS_OF_NOTE = frozenset({"__call__", "__init__", "__post_init__"})


def _name_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}:{qualname}" if qualname else type(obj).__name__


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return dict(typing.get_type_hints(obj))
    except Exception:  # unresolvable string annotations: what is written is the content
        raw = getattr(obj, "__annotations__", None)
        return {k: repr(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
