"""Every destination Flow exports to, by name, and the request bodies built from them.

A new destination is a module defining its :class:`DestinationSpec` and one line in
:data:`PROVIDERS`: the create body (a union discriminated by ``provider``), the edit
body (the common fields plus every destination's own) and the CLI's choices follow.

Failure behaviour: two destinations declaring the same edit field with types that
cannot be merged fail at import, naming the field; :func:`spec_for` raises
:class:`KeyError` for a name no destination has (the database only stores known ones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from flow.exporters.mixpanel import MIXPANEL
from flow.exporters.posthog import POSTHOG
from flow.exporters.spec import CommonPatch, DestinationSpec, IntegrationBody
from flow.exporters.stripe import STRIPE

PROVIDERS: dict[str, DestinationSpec[Any]] = {
    spec.name: spec for spec in (POSTHOG, MIXPANEL, STRIPE)
}


def spec_for(provider: str) -> DestinationSpec[Any]:
    return PROVIDERS[provider]


def _literal_values(annotation: Any) -> tuple[Any, ...] | None:
    """The values of ``Literal[...] | None``, or ``None`` for any other annotation."""
    members = [a for a in get_args(annotation) if a is not type(None)]
    if len(members) != 1 or get_origin(members[0]) is not Literal:
        return None
    return get_args(members[0])


def _merged(name: str, fields: list[FieldInfo]) -> tuple[Any, Any]:
    """One edit field out of the same field declared by several destinations: the same
    declaration, or optional literals (regions) accepting any destination's value."""
    first = fields[0]
    if all(f.annotation == first.annotation and f.metadata == first.metadata for f in fields):
        return first.annotation, first
    values = [_literal_values(f.annotation) for f in fields]
    if any(v is None for v in values) or any(f.metadata for f in fields):
        raise TypeError(f"destinations declare the edit field {name!r} with different types")
    accepted = tuple(dict.fromkeys(v for vs in values if vs is not None for v in vs))
    literal: Any = Literal[accepted]
    return literal | None, None


def _patch_model() -> type[CommonPatch]:
    declared: dict[str, list[FieldInfo]] = {}
    for spec in PROVIDERS.values():
        for name, info in spec.patch_model.model_fields.items():
            declared.setdefault(name, []).append(info)
    fields: dict[str, Any] = {name: _merged(name, infos) for name, infos in declared.items()}
    return create_model(
        "IntegrationPatch",
        __base__=CommonPatch,
        __doc__="Edits: any subset of credentials, destination and sync settings.",
        __module__=__name__,
        **fields,
    )


if TYPE_CHECKING:
    IntegrationCreate = IntegrationBody
    IntegrationPatch = CommonPatch
else:
    IntegrationCreate = Annotated[
        Union[tuple(spec.create_model for spec in PROVIDERS.values())],  # noqa: UP007
        Field(discriminator="provider"),
    ]
    IntegrationPatch = _patch_model()
