"""Turn the pydantic config fields into `--kebab-case` Typer options, grouped in help panels.

The config models stay the one place where a hyperparameter, its type, its default and its
description are written down; the flags of `train`, `resume` and `params` are derived from them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Optional

import typer

from ..config import ALL_FIELDS, FIELD_INFO, PRESETS, flag_name


# The two options every config-driven command shares.
PRESET_OPTION = typer.Option(None, "--preset", help=f"Starting values: {', '.join(PRESETS)} (default baby, GPU-sized; cpu: minutes on a laptop).")
CONFIG_OPTION = typer.Option(None, "--config", help="TOML file of settings (flags override it).")


def _option(name: str, defaults_from_run: bool) -> inspect.Parameter:
    info = FIELD_INFO[name]
    extra = info.json_schema_extra or {}
    annotation = str if extra.get("text") else info.annotation  # "text": the field parses its own text (a duration)
    panel = extra.get("panel", "Options")
    if defaults_from_run:  # resume: an unset flag keeps the run's own value, not the field's default
        default = " (default: the run's saved value)"
    else:
        default = "" if info.default is None else f" (default {info.default})"
    kwargs: dict[str, Any] = {"help": f"{info.description}{default}", "rich_help_panel": panel, "show_default": False}
    decls = [flag_name(name)]
    if annotation is bool:
        decls = [f"{flag_name(name)}/--no-{name.replace('_', '-')}"]
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, *decls, **kwargs), annotation=Optional[annotation]
    )


def with_config_flags(fields: Iterable[str] = ALL_FIELDS, defaults_from_run: bool = False) -> Callable:
    """Decorate `command(flags: dict, **own_options)`: the config fields arrive in `flags`
    (None where the flag was not given), the command's own options as usual. `defaults_from_run`:
    the help says that an unset flag keeps the run's saved value (resume)."""
    fields = tuple(fields)

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "flags"]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            flags = {name: kwargs.pop(name) for name in fields}
            return command(flags, **kwargs)

        params = own + [_option(name, defaults_from_run) for name in fields]
        del wrapper.__wrapped__  # Typer must read the signature below, not the original one
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
