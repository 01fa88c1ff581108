"""The blocking client is generated from the AsyncClient (client/tools/gen_sync_client.py)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "client" / "tools" / "gen_sync_client.py"


@pytest.fixture(scope="module")
def gen() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_sync_client", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_committed_sync_client_is_up_to_date(gen: types.ModuleType) -> None:
    assert gen.generate() == gen.TARGET.read_text(), "stale: run make sync-client"


SOURCE = '''
from __future__ import annotations
from collections.abc import AsyncIterator, Iterable
from ._types import Thing

class AsyncClient:
    def __init__(self) -> None: ...
    @classmethod
    def connect(cls, target: str = "here", *, options: Iterable[str] = ()) -> Connecting: ...
    async def _private(self) -> None: ...

    # ------------------------------------------------------------- things

    async def make(self, name: str, tags: Iterable[str] = (), *, n: int = 1) -> Thing:
        """Makes a thing."""

    def list_things(self, *, page_size: int = 0) -> AsyncIterator[Thing]: ...
'''


def test_methods_become_blocking_with_the_same_signature(gen: types.ModuleType) -> None:
    text = gen.render(SOURCE)
    assert "# ------------------------------------------------------------- things" in text
    assert "def make(self, name: str, tags: Iterable[str]=(), *, n: int=1) -> Thing:" in text
    assert '"""Makes a thing."""' in text
    # an Iterable argument is made a list in the caller's thread
    assert "return self._loop.run(self._client.make(name, list(tags), n=n))" in text
    assert "def list_things(self, *, page_size: int=0) -> Iterator[Thing]:" in text
    assert "return self._loop.iterate(self._client.list_things(page_size=page_size))" in text
    assert "_private" not in text
    assert "from ._types import Thing" in text


def test_connect_takes_the_parameters_of_the_async_connect(gen: types.ModuleType) -> None:
    text = gen.render(SOURCE)
    assert "def connect(cls, target: str='here', *, options: Iterable[str]=()) -> Client:" in text
    assert "options = list(options)" in text  # in the caller's thread
    assert "return await AsyncClient.connect(target, options=options)" in text
    assert "def connect(target: str='here', *, options: Iterable[str]=()) -> Client:" in text
    assert "return Client.connect(target, options=options)" in text


def test_a_method_it_cannot_mirror_is_an_error(gen: types.ModuleType) -> None:
    source = SOURCE + "\n    def plain(self) -> int: ...\n"
    with pytest.raises(gen.GenerateError, match="plain"):
        gen.render(source)
