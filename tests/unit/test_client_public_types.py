"""Every type the shipped client's public names mention is itself public: a user
can import and annotate whatever a call takes or returns (``AsyncClient.connect``
once returned a private ``_Connect``)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterator

import pyarrow as pa
import pytest

import nex.collector.client as client_pkg
from nex.collector.client import AsyncClient, Connecting

# Built only by their own ``connect``; users never call the constructor.
_PRIVATE_CONSTRUCTORS = {"Client"}


def _annotated(obj: object) -> Iterator[tuple[str, object]]:
    """(where, callable or class) for a public name and its public members."""
    yield "", obj
    if not isinstance(obj, type):
        return
    for name, member in vars(obj).items():
        if name.startswith("_") and name not in ("__init__", "__aenter__", "__enter__"):
            continue
        if name == "__init__" and obj.__name__ in _PRIVATE_CONSTRUCTORS:
            continue
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        elif isinstance(member, property):
            member = member.fget
        if callable(member):
            yield f".{name}", member


def _types_in(hint: object) -> Iterator[type]:
    if isinstance(hint, type):
        yield hint
    for arg in typing.get_args(hint):
        yield from _types_in(arg)


def _client_types_mentioned() -> Iterator[tuple[str, type]]:
    # getattr, not vars(): a package may load its names lazily (PEP 562).
    public = {name: getattr(client_pkg, name) for name in client_pkg.__all__}
    for name in client_pkg.__all__:
        value = public[name]
        if not callable(value) or typing.get_origin(value) is not None:  # a type alias
            yield from ((name, cls) for cls in _types_in(value) if cls is not value)
            continue
        for where, obj in _annotated(value):
            module = inspect.getmodule(obj)
            # `pa`: the optional pyarrow the dataset readers name (imported only
            # when type checking, so not in the module's globals).
            hints = typing.get_type_hints(
                obj, globalns=vars(module) if module else None, localns={**public, "pa": pa}
            )
            for hint in hints.values():
                for cls in _types_in(hint):
                    if cls.__module__.startswith("nex.collector.client"):
                        yield f"{name}{where}", cls


def test_the_walk_sees_return_types() -> None:
    mentioned = set(_client_types_mentioned())
    assert ("AsyncClient.connect", Connecting) in mentioned
    assert ("AsyncClient.get_template", client_pkg.PromptTemplate) in mentioned


def _by_place(mention: tuple[str, type]) -> tuple[str, str]:
    return mention[0], mention[1].__name__


MENTIONED = sorted(set(_client_types_mentioned()), key=_by_place)


@pytest.mark.parametrize(("where", "cls"), MENTIONED)
def test_each_type_a_public_name_mentions_is_public(where: str, cls: type) -> None:
    assert getattr(client_pkg, cls.__name__, None) is cls, (
        f"{where} mentions {cls.__module__}.{cls.__qualname__}, which is not in __all__"
    )


async def test_connect_returns_the_public_connecting_type() -> None:
    connecting = AsyncClient.connect("127.0.0.1:9", lazy=True)
    assert type(connecting) is Connecting
    async with connecting as client:
        assert isinstance(client, AsyncClient)
