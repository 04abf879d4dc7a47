"""A generator ``map`` run as a plain function that appends its pairs to a list.

Calling a generator ``map`` once per record costs a generator object per record, about 120 ns, which
is 7% of a filter-and-count job over access logs, where 19 lines in 20 yield nothing. When every
``yield`` of a map can run at most once per call (none is inside a loop), its pairs per call are
bounded, so nothing is lost by collecting them eagerly. ``eager_map`` then compiles the map's file
once more, with each ``yield pair`` statement of the map turned into ``append(pair)``:
- the same file, lines and globals, so tracebacks and the failure context (``corral.failure_context``)
  still name the user's line and record;
- fresh locals in every call, as before (a name left unset still raises ``UnboundLocalError``);
- a StopIteration raised in it still fails the task as a RuntimeError (PEP 479).

Before it rewrites anything, ``eager_map`` compiles the file unchanged and checks that the map's code
object there is equal to the running one. Any difference (the file edited since the import, a
decorator, a closure, ``super()``, no source at all) keeps the generator, as does any ``yield`` it
cannot rewrite (in a loop, ``yield from``, a yield whose value is used). Either way, the map yields
the same pairs in the same order.
"""

from __future__ import annotations
import __future__

import ast
import inspect
import linecache
import types
from collections.abc import Callable, Iterator
from typing import Any

#: Records mapped before their pairs go on: bounds the list of pairs of one batch of input.
RECORDS_PER_LIST = 4096

_APPEND = "_corral_append_pair"
_FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag
_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_YIELDS = (ast.Yield, ast.YieldFrom, ast.Await)

_compiled: dict[types.CodeType, types.FunctionType | None] = {}


def eager_map(method: Callable[..., Any]) -> Callable[..., Any] | None:
    """``method`` (a bound generator method ``map(self, key, value)``) as a bound method
    ``map(key, value, append)`` that calls ``append(pair)`` where the original yields; None when it
    cannot be rewritten exactly (see the module's docstring). Compiled once per code object."""
    function = getattr(method, "__func__", None)
    owner = getattr(method, "__self__", None)
    if type(function) is not types.FunctionType or owner is None:
        return None
    code = function.__code__
    if code not in _compiled:
        try:
            _compiled[code] = _rewrite(function)
        except (RecursionError, MemoryError, ValueError, TypeError):  # a file too deep for ast: as written
            _compiled[code] = None
    rewritten = _compiled[code]
    return None if rewritten is None else types.MethodType(rewritten, owner)


def eager_pairs(map_appending: Callable[..., Any], batch: list[Any], keyed: bool) -> Iterator[list[Any]]:
    """The pairs that ``map_appending`` (from ``eager_map``) gives for ``batch``, a list of pairs per
    RECORDS_PER_LIST records, as the generator map yields them; a record is (key, value) if ``keyed``."""
    for start in range(0, len(batch), RECORDS_PER_LIST):
        records = batch if len(batch) <= RECORDS_PER_LIST else batch[start : start + RECORDS_PER_LIST]
        pairs: list[Any] = []
        append = pairs.append
        if keyed:
            for key, value in records:
                map_appending(key, value, append)
        else:
            for value in records:
                map_appending(None, value, append)
        yield pairs


def _rewrite(function: types.FunctionType) -> types.FunctionType | None:
    code = function.__code__
    if (
        not code.co_flags & inspect.CO_GENERATOR
        or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
        or code.co_argcount != 3
        or code.co_posonlyargcount
        or code.co_kwonlyargcount
        or function.__closure__
        or function.__defaults__
    ):
        return None
    source = "".join(linecache.getlines(code.co_filename, function.__globals__))
    if not source or _APPEND in source:  # no source: defined in a string, or the file is gone
        return None
    try:  # the whole file, as its import compiled it: the same module-level names and class names
        module = ast.parse(source)
    except SyntaxError:
        return None
    definition = next((node for node in ast.walk(module) if isinstance(node, ast.FunctionDef)
                       and node.lineno == code.co_firstlineno and node.name == code.co_name), None)
    if definition is None or definition.decorator_list:
        return None
    if _compiled_function(module, code) != code:  # the source is not what runs
        return None
    if not _append_instead_of_yield(definition):
        return None
    definition.args.args.append(ast.copy_location(ast.arg(_APPEND), definition.args.args[-1]))
    rewritten = _compiled_function(module, code)
    if rewritten is None or rewritten.co_flags & inspect.CO_GENERATOR:
        return None
    eager = types.FunctionType(rewritten, function.__globals__, function.__name__)
    eager.__qualname__ = function.__qualname__
    eager.__module__ = function.__module__
    return eager


def _compiled_function(module: ast.Module, original: types.CodeType) -> types.CodeType | None:
    """The code object of the function in ``module`` that starts where ``original`` starts, compiled
    as ``original`` was: same file name and ``from __future__`` flags."""
    flags = original.co_flags & _FUTURE_FLAGS
    try:
        compiled = compile(module, original.co_filename, "exec", flags=flags, dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    holders = [compiled]
    while holders:
        holder = holders.pop()
        for constant in holder.co_consts:
            if isinstance(constant, types.CodeType):
                if constant.co_name == original.co_name and constant.co_firstlineno == original.co_firstlineno:
                    return constant
                holders.append(constant)
    return None


def _append_instead_of_yield(definition: ast.FunctionDef) -> bool:
    """Turn each ``yield pair`` statement of ``definition`` into ``append(pair)``, in place; False
    (leaving it unusable) if a yield is not a statement, is ``yield from``, or is inside a loop."""

    def visit(node: ast.AST, in_loop: bool) -> bool:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _NESTED_SCOPES):  # its yields are its own, but not those of
                if any(isinstance(n, _YIELDS) for part in _outer_parts(child) for n in ast.walk(part)):
                    return False  # its decorators, defaults and bases, evaluated in this function
                continue
            if isinstance(child, ast.Expr) and isinstance(child.value, ast.Yield):
                if in_loop:
                    return False
                pair = child.value.value or ast.copy_location(ast.Constant(None), child.value)
                if not visit(pair, in_loop):
                    return False
                call = ast.Call(ast.Name(_APPEND, ast.Load()), [pair], [])
                child.value = ast.fix_missing_locations(ast.copy_location(call, child.value))
                continue
            if isinstance(child, _YIELDS):
                return False
            if not visit(child, in_loop or isinstance(child, _LOOPS)):
                return False
        return True

    return visit(definition, False)


def _outer_parts(scope: ast.AST) -> list[ast.AST]:
    """What of a nested def, lambda or class the enclosing function evaluates."""
    parts: list[Any] = [*getattr(scope, "decorator_list", ()), *getattr(scope, "bases", ())]
    parts += [keyword.value for keyword in getattr(scope, "keywords", ())]
    arguments = getattr(scope, "args", None)
    if isinstance(arguments, ast.arguments):
        parts += [*arguments.defaults, *(d for d in arguments.kw_defaults if d is not None)]
    return parts
