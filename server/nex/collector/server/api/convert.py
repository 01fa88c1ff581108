"""Domain objects <-> protobuf messages; the only module that knows both."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from nex.collector.server.domain.context_refs import ContextRef
from nex.collector.server.domain.templates import PromptTemplate
from nex.collector.v1 import context_ref_pb2, template_pb2


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def context_ref(ref: ContextRef) -> context_ref_pb2.ContextRef:
    return context_ref_pb2.ContextRef(
        id=ref.id,
        nex_context_id=ref.nex_context_id,
        nex_context_version=ref.nex_context_version,
        labels=ref.labels,
        create_time=timestamp(ref.create_time),
    )


def template(t: PromptTemplate) -> template_pb2.PromptTemplate:
    return template_pb2.PromptTemplate(
        id=t.id,
        name=t.name,
        version=t.version,
        system_template=t.system_template,
        user_template=t.user_template,
        variables=list(t.variables),
        context_ref_id=t.context_ref_id or "",
        create_time=timestamp(t.create_time),
    )
