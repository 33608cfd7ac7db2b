"""How every command's --help names what to type: a flag shows nothing after its name, an option
its value (N for a whole number, NUMBER, FILE, DIR, or its own name: --method METHOD), an
argument its metavar in the usage line and the panel alike (RUN_OR_MODEL, DIR); no type tags.
"""

from __future__ import annotations

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# A value option's metavar by its Python type, where the option does not name one itself.
TYPE_METAVARS = {int: "N", float: "NUMBER"}


def _no_type(ctx) -> None:
    return None


def name_what_to_type(params) -> None:
    """Set each parameter's metavar (once: a help and a usage error both read it)."""
    for param in params:
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = param.name.upper()
            param.display_type_rich = _no_type  # the argument's name says it; "<str>" would not
        elif isinstance(param, TyperOption) and param.metavar is None:
            if param.is_flag:
                param.metavar = ""
            else:
                annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
                param.metavar = TYPE_METAVARS.get(annotation) or param.name.upper()


class Command(TyperCommand):
    """Every golabels command: its parameters named as above, and a usage line that writes a
    required argument as plain NAME (typer writes {NAME}), as adapt's SOURCE TARGET."""

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)  # with --help, which click adds here
        name_what_to_type(params)
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece.replace("{", "").replace("}", "") for piece in super().collect_usage_pieces(ctx)]


class AdaptCommand(Command):
    """adapt's usage line shows SOURCE and TARGET as the required arguments they are, unless
    --config or --resume gives them (which is why the parser itself does not require them)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece.strip("[]") if piece in ("[SOURCE]", "[TARGET]") else piece for piece in super().collect_usage_pieces(ctx)]


class Group(TyperGroup):
    """`golabels --help`: its own options (--version, --help) named as the commands' are."""

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)
        name_what_to_type(params)
        return params
