"""Which routes uv is told about: a route to the only index is left out of uv's input (uv would
take those packages from there anyway, and with it uv 0.13 drops the previous lock's versions
for them); any other index or find-links location keeps it, so torch cannot come from there."""

from __future__ import annotations

from provision.lock.indexes import Index, IndexConfig
from provision.lock.resolve import Route, needed_routes, project_toml
from provision.tomlparse import loads

PYPI = "https://pypi.org/simple"


def _route(url: str) -> Route:
    return Route(Index("torch", url, "pypi", explicit=True), ("torch", "torchvision"))


def test_a_route_to_the_only_index_is_left_out():
    config = IndexConfig(Index("default", PYPI, "default"))
    assert needed_routes([_route(PYPI)], config) == []
    doc = loads(project_toml(["torch==2.6.0"], "3.11", needed_routes([_route(PYPI)], config), {}))
    assert "sources" not in doc["tool"]["uv"] and "index" not in doc["tool"]["uv"]


def test_a_route_elsewhere_or_beside_other_indexes_is_kept():
    torch = _route("https://download.pytorch.org/whl/cu124")
    assert needed_routes([torch], IndexConfig(Index("default", PYPI, "default"))) == [torch]
    pypi = _route(PYPI)
    extra = IndexConfig(
        Index("default", PYPI, "default"), extras=[Index("extra-1", "https://e/simple", "pip")]
    )
    links = IndexConfig(Index("default", PYPI, "default"), find_links=[("/wheels", "pip")])
    flat = Route(Index("torch", PYPI, "x", format="flat", explicit=True), ("torch",))
    assert needed_routes([pypi], extra) == [pypi]
    assert needed_routes([pypi], links) == [pypi]
    assert needed_routes([flat], IndexConfig(Index("default", PYPI, "default"))) == [flat]
    doc = loads(project_toml(["torch==2.6.0"], "3.11", needed_routes([pypi], extra), {}))
    assert doc["tool"]["uv"]["sources"]["torch"] == {"index": "torch"}
