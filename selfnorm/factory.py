"""A user's model factory, named ``MODULE_OR_FILE:FACTORY``: parsed, imported and called here.

``MODULE_OR_FILE`` is a ``.py`` file (imported with its folder first on ``sys.path``, as
``python FILE.py`` would) or an importable module name (the working directory first on
``sys.path``). ``selfnorm check`` calls the factory with no arguments; ``selfnorm compare
--model`` with the keywords of :data:`selfnorm.models.FACTORY_KEYWORDS`
(:func:`selfnorm.models.build_factory`). Every mistake in the target or in the user's code is a
``ValueError`` of one line that names the target and the fix.

Example:
    >>> split_target("models.py:make"), split_target("mypkg.models:make")
    (('models.py', 'make', True), ('mypkg.models', 'make', False))
    >>> make = load_factory("collections:OrderedDict")
    >>> make()
    OrderedDict()
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

__all__ = ["absolute_target", "cause", "load_factory", "split_target"]


def split_target(target: str) -> tuple[str, str, bool]:
    """``MODULE_OR_FILE:FACTORY`` -> ``(MODULE_OR_FILE, FACTORY, is_file)``; a path (``.py``
    or with a ``/``) is a file, anything else a module name.

    Raises:
        ValueError: no ``:``, or nothing before or after it.
    """
    ref, sep, attr = str(target).rpartition(":")
    if not sep or not ref or not attr:
        raise ValueError(
            f"expected MODULE_OR_FILE:FACTORY, got {target!r}; e.g. models.py:make_model or "
            "mypackage.models:make_model"
        )
    return ref, attr, ref.endswith(".py") or os.sep in ref or "/" in ref


def absolute_target(target: str) -> str:
    """The target with a file's path made absolute (a module name is kept), so that it names
    the same file from any working directory.

    Example:
        >>> absolute_target("mypkg.models:make")
        'mypkg.models:make'
        >>> Path(absolute_target("models.py:make").rpartition(":")[0]).is_absolute()
        True
    """
    ref, attr, is_file = split_target(target)
    return f"{Path(ref).expanduser().resolve()}:{attr}" if is_file else target


@contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """Put ``directory`` first on ``sys.path`` while importing and calling the factory (what
    ``python script.py`` does for the script's folder); restore ``sys.path`` afterwards."""
    saved = list(sys.path)
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        sys.path[:] = saved


def cause(exc: BaseException) -> str:
    """``Type: message`` of an exception in the user's code, with where it was raised.

    Example:
        >>> cause(KeyError("fc9"))
        "KeyError: 'fc9'"
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{': ' + text if text else ''}{where}"


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ValueError(f"no such file: {path}; pass FILE.py:FACTORY or MODULE:FACTORY")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"_selfnorm_factory_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path} as Python source; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: one line naming the file, then the cause
        del sys.modules[name]
        raise ValueError(
            f"importing {path} raised {cause(exc)}; fix the file (python {path} shows the "
            "full traceback)"
        ) from None
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ValueError(
                f"no module named {exc.name!r} (from {name!r}) with {os.getcwd()} on the path; "
                "pass an importable module name or a path to a .py file, e.g. "
                "models.py:make_model"
            ) from None
        raise


def _check_signature(factory: Callable, where: str, keywords: Sequence[str]) -> None:
    """Refuse a factory that cannot be called with exactly ``keywords``: one that requires
    another argument, or does not take one of them (and has no ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the call will tell
        return
    by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and (p.kind not in by_name or p.name not in keywords)
    ]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in by_name}
    refused = [] if takes_any else [k for k in keywords if k not in named]
    if not keywords and required:
        raise ValueError(
            f"{where} requires {', '.join(required)}; FACTORY must be callable with no "
            "arguments (wrap it: def make(): return build(...))"
        )
    if required or refused:
        what = f"requires {', '.join(required)}" if required else ""
        what += " and " if required and refused else ""
        what += f"does not take {', '.join(refused)}" if refused else ""
        attr = where.rpartition(":")[2]
        raise ValueError(
            f"{where} {what}; it is called with keyword arguments only: define "
            f"def {attr}(*, {', '.join(keywords)}, **kwargs)"
        )


def load_factory(target: str, keywords: Sequence[str] = ()) -> Callable[..., object]:
    """Resolve ``MODULE_OR_FILE:FACTORY`` to a function that calls the factory with the
    keyword arguments ``keywords`` names (none by default), with the file's folder (or, for a
    module name, the working directory) first on ``sys.path``, as while importing it.

    Raises:
        ValueError: malformed target, missing file/module/attribute, a factory that is not
            callable or cannot be called with exactly ``keywords``; and, from the returned
            function, an exception the factory raised.
    """
    ref, attr, is_file = split_target(target)
    directory = str(Path(ref).resolve().parent) if is_file else os.getcwd()
    with _on_sys_path(directory):
        module = _import_file(Path(ref)) if is_file else _import_module(ref)
    factory = getattr(module, attr, None)
    if factory is None:
        names = sorted(
            n
            for n, v in vars(module).items()
            if callable(v)
            and not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__
        )
        defined = ", ".join(names) or "none"
        raise ValueError(f"{ref} has no attribute {attr!r}; callables defined there: {defined}")
    if not callable(factory):
        raise ValueError(f"{ref}:{attr} is a {type(factory).__name__}, not a callable factory")
    keywords = tuple(keywords)
    _check_signature(factory, f"{ref}:{attr}", keywords)

    def call(**kwargs: object) -> object:
        assert set(kwargs) == set(keywords), (sorted(kwargs), keywords)
        with _on_sys_path(directory):
            try:
                return factory(**kwargs)
            except Exception as exc:  # the user's code
                how = f"with {', '.join(keywords)}" if keywords else "with no arguments"
                raise ValueError(
                    f"{target}() raised {cause(exc)}; fix the factory, it must return the "
                    f"model when called {how}"
                ) from None

    return call
