"""The service's views of the refine options, derived from their one declaration
(:mod:`bpr.options`): the ``BPR_*`` settings, the per-request query model and the option
fields of ``/v1/models``. A new option appears in all three without an edit here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_settings import BaseSettings

from bpr.options import option_infos, option_types


def setting_fields() -> dict[str, Any]:
    """One optional ``BPR_<OPTION>`` setting per option: None keeps the checkpoint's recommendation
    or the library's default."""
    fields, types = {}, option_types()
    for name, info in option_infos().items():
        source = "the checkpoint's recommendation, else the library's" if info.recommended else "the library's"
        fields[name] = (
            types[name] | None,
            Field(None, **info.bounds(), description=f"{info.help}; default: {source}"),
        )
    return fields


def query_fields() -> dict[str, Any]:
    """One optional query parameter per option a request may set; None = the server's default."""
    fields, types = {}, option_types()
    for name, info in option_infos().items():
        if not info.per_request:
            continue
        bounds = info.bounds()
        if info.request_le is not None:
            bounds = {k: v for k, v in bounds.items() if k not in ("le", "lt")} | {"le": info.request_le}
        fields[name] = (
            types[name] | None,
            Field(None, **bounds, description=f"{info.help}; default: the server's (BPR_{name.upper()})"),
        )
    return fields


def info_fields() -> dict[str, Any]:
    """The options a running server applies, for ``/v1/models``."""
    types = option_types()
    return {name: (types[name], Field(description=info.help)) for name, info in option_infos().items()}


class _QueryBase(BaseModel):
    model_config = ConfigDict(extra="ignore")


if TYPE_CHECKING:  # the checker sees plain classes; the fields exist at run time

    class OptionSettings(BaseSettings): ...

    class RefineQuery(_QueryBase): ...

else:
    OptionSettings = create_model("OptionSettings", __base__=BaseSettings, **setting_fields())
    RefineQuery = create_model(
        "RefineQuery",
        __base__=_QueryBase,
        __doc__="Per-request refinement settings (query parameters of /refine and /segment); None = the server's.",
        **query_fields(),
    )
