"""A fake OpenAI upstream for each cache test module, served on 127.0.0.1 (it records what reached it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, ServedApp]]:
    fake = FakeOpenAI()
    with ServedApp(fake) as served:
        yield fake, served
