"""TemplateService through the shipped client against a real server."""

from __future__ import annotations

from typing import Any

import pytest

from nex.collector.client import Client, InvalidArgumentError, NotFoundError
from tests.conftest import unique


def test_versions_per_name_and_immutability(client: Client) -> None:
    name = unique("summarise")
    v1 = client.create_template(name, user_template="Summarise {{ text }}", variables=["text"])
    v2 = client.create_template(
        name,
        system_template="You are {{ persona }}.",
        user_template="Summarise {{ text }}",
        variables=["persona", "text"],
    )
    assert (v1.version, v2.version) == (1, 2)
    assert client.get_template(v1.id) == v1  # the first version is unchanged
    assert [t.version for t in client.list_templates(name=name)] == [1, 2]


def test_request_id_returns_the_first_version(client: Client) -> None:
    name, request_id = unique("idem"), unique("req")
    first = client.create_template(
        name, user_template="{{ a }}", variables=["a"], request_id=request_id
    )
    again = client.create_template(
        name, user_template="{{ a }}", variables=["a"], request_id=request_id
    )
    assert again == first
    assert len(list(client.list_templates(name=name))) == 1


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"user_template": "Hello {{ name", "variables": ["name"]}, "user_template", "syntax"),
        (
            {"user_template": "Hello {{ name }} {{ extra }}", "variables": ["name"]},
            "user_template",
            "extra",
        ),
        (
            {"system_template": "{% if x %}", "user_template": "{{ x }}", "variables": ["x"]},
            "system_template",
            "syntax",
        ),
        ({"user_template": "", "variables": []}, "user_template", "required"),
        ({"user_template": "{{ a }}", "variables": ["a", "a"]}, "variables[1]", "twice"),
        (
            {"user_template": "{{ a }}", "variables": ["a", "not valid"]},
            "variables[1]",
            "identifier",
        ),
    ],
)
def test_bad_templates_are_rejected_with_the_field(
    client: Client, kwargs: dict[str, Any], field: str, words: str
) -> None:
    name = unique("bad")
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_template(name, **kwargs)
    violations = {v.field: v.description for v in caught.value.field_violations}
    assert field in violations
    assert words in violations[field]
    assert list(client.list_templates(name=name)) == []


def test_unknown_context_ref_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError):
        client.create_template(
            unique("t"), user_template="x", variables=[], context_ref_id="ctx_missing"
        )


def test_template_linked_to_a_context_ref(client: Client) -> None:
    ref = client.create_context_ref(unique("ctx"), "1")
    t = client.create_template(unique("t"), user_template="x", variables=[], context_ref_id=ref.id)
    assert client.get_template(t.id).context_ref_id == ref.id
