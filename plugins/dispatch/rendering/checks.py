"""Refuse a bad template when the configuration is loaded, not when the invoice goes out.

The config loader calls these so that a template that does not compile (syntax error, unknown
filter, a constant expression over a limit) or a ``template:`` file that is missing or escapes
the templates directory stops the load with the line to fix, rather than turning every
invoice of the plan into a manual action at send time. Nothing is rendered here.
"""

from __future__ import annotations

from dispatch.rendering import limits
from dispatch.rendering.errors import TemplateError, describe
from dispatch.rendering.limits import TemplateLimitError
from dispatch.rendering.lookup import is_text_file, locate, text_sibling, validate_name
from dispatch.rendering.sandbox import envs


def check_template_source(source: str, *, html: bool = False) -> None:
    """Refuse an inline template that does not compile, without rendering it."""
    if not isinstance(source, str):
        raise TemplateError("template: must be text", part="template")
    sandboxes = envs()
    try:
        with limits.compile_refusals() as refused:
            (sandboxes.html if html else sandboxes.text).from_string(source)
    except Exception as exc:
        lineno = getattr(exc, "lineno", None)
        where = f"line {lineno}: " if lineno else ""
        raise TemplateError(
            f"{where}{describe(exc)}",
            part="template",
            lineno=lineno,
            over_limit=isinstance(exc, TemplateLimitError),
        ) from exc
    if refused:  # a constant expression over a limit: known now, so refused now
        raise TemplateError(f"refused when compiled: {refused[0]}", part="template", over_limit=True)


def check_template_file(name: str) -> None:
    """Refuse a ``template:`` file that is missing, escapes the templates directory, or
    does not compile (its text sibling included)."""
    clean = validate_name(name)
    sandboxes = envs()
    if locate(clean, sandboxes.dirs) is None:
        raise TemplateError(f"template file {name!r}: not found under the templates directory", part=name)
    names = [clean]
    sibling = None if is_text_file(clean) else text_sibling(clean)
    if sibling and locate(sibling, sandboxes.dirs) is not None:
        names.append(sibling)
    for item in names:
        env = sandboxes.text if is_text_file(item) else sandboxes.html
        try:
            source, _filename, _uptodate = env.loader.get_source(env, item)  # type: ignore[union-attr]
            with limits.compile_refusals() as refused:
                env.compile(source, name=item)
        except Exception as exc:
            lineno = getattr(exc, "lineno", None)
            where = f", line {lineno}" if lineno else ""
            raise TemplateError(
                f"template file {item!r}{where}: {describe(exc)}",
                part=item,
                lineno=lineno,
                over_limit=isinstance(exc, TemplateLimitError),
            ) from exc
        if refused:
            raise TemplateError(
                f"template file {item!r}: refused when compiled: {refused[0]}", part=item, over_limit=True
            )
