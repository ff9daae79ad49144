"""Where template files are found, and which default wording a customer's language gets.

A ``template:`` file name is user content: it is checked before the disk is touched, may not
leave the templates directories (no ``..``, no absolute path, no symlink pointing out), and is
looked up first in ``$DISPATCH_TEMPLATES_DIR`` and then in the repository's
``include/templates``, so an override directory may hold only the files it changes. The
default wording sits in one directory per language, English being the fallback.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import jinja2
from babel import Locale

from dispatch.paths import TEMPLATES_DIR, resolve
from dispatch.rendering.errors import TemplateError, as_template_error
from dispatch.rendering.filters import FALLBACK_LANGUAGE, resolve_locale

TEMPLATES_DIR_ENV = "DISPATCH_TEMPLATES_DIR"

# The default files, per language directory.
DEFAULT_EMAIL_SUBJECT = "email_subject.txt.j2"
DEFAULT_EMAIL_HTML = "email.html.j2"
DEFAULT_EMAIL_TEXT = "email.txt.j2"
DEFAULT_SMS = "sms.txt.j2"
DEFAULT_LETTER = "letter.txt.j2"
EMAIL_LAYOUT = "layout/email.html.j2"


def templates_dirs() -> tuple[Path, ...]:
    """Where templates are looked up: ``$DISPATCH_TEMPLATES_DIR`` first (when set), then the
    repository's ``include/templates``, so an override directory may hold only the files it
    changes and still find the defaults.

    Read for every message (twice per e-mail), so the resolved directories are cached per
    value of the variable: a changed ``$DISPATCH_TEMPLATES_DIR`` is picked up at once, and
    the files themselves are never cached here (Jinja reloads a changed file, and
    :func:`locate` checks each name on the disk)."""
    return _resolved_dirs(os.environ.get(TEMPLATES_DIR_ENV, "").strip())


@functools.lru_cache(maxsize=8)
def _resolved_dirs(override: str) -> tuple[Path, ...]:
    dirs: list[Path] = []
    if override:
        dirs.append(resolve(Path(override)).resolve())
    builtin = resolve(TEMPLATES_DIR).resolve()
    if builtin not in dirs:
        dirs.append(builtin)
    return tuple(dirs)


def validate_name(name: Any) -> str:
    """Refuse names that could leave the templates directory before touching the disk."""
    if not isinstance(name, str) or not name.strip():
        raise TemplateError("template file: the name is empty", part="template")
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise TemplateError(
            f"template file {name!r}: must be a relative path under the templates directory", part=name
        )
    if any(piece == ".." for piece in name.split("/")):
        raise TemplateError(f"template file {name!r}: '..' is not allowed", part=name)
    return "/".join(piece for piece in name.split("/") if piece not in ("", "."))


def locate(name: str, dirs: tuple[Path, ...]) -> Path | None:
    """The file a name resolves to, or None; a symlink pointing outside the directory that
    holds it does not count (the loader would otherwise follow it)."""
    for base in dirs:
        candidate = base / name
        if candidate.is_file():
            if _inside(candidate, base):
                return candidate
            raise TemplateError(
                f"template file {name!r}: resolves outside the templates directory", part=name
            )
    return None


def _inside(candidate: Path, base: Path) -> bool:
    """Whether ``candidate`` (``base`` / a name without ``..``) resolves inside ``base``.

    Looked up for every message (the e-mail layout), so the common case costs one ``lstat``
    per component of the name: when ``base`` is its own real path and no component below it
    is a symlink, the real path of the candidate is ``base`` / name, inside ``base``. Any
    symlink takes the full resolution."""
    real_base = _real(base)
    if real_base == base and not any(
        os.path.islink(part) for part in (candidate, *candidate.parents[: _depth(candidate, base)])
    ):
        return True
    return candidate.resolve().is_relative_to(real_base)


def _depth(candidate: Path, base: Path) -> int:
    """How many directories lie between ``base`` and ``candidate`` (0: directly in ``base``)."""
    return len(candidate.relative_to(base).parts) - 1


@functools.lru_cache(maxsize=32)
def _real(base: Path) -> Path:
    return base.resolve()


def load(env: jinja2.Environment, name: str, dirs: tuple[Path, ...]) -> jinja2.Template:
    """The compiled template file ``name`` of ``env``; a :class:`TemplateError` if it cannot be."""
    clean = validate_name(name)
    if locate(clean, dirs) is None:
        raise TemplateError(f"template file {name!r}: not found under the templates directory", part=name)
    try:
        return env.get_template(clean)
    except Exception as exc:
        raise as_template_error(exc, name, dirs) from exc


def is_text_file(name: str) -> bool:
    """A ``.txt``/``.txt.j2`` file renders without HTML escaping; anything else is HTML."""
    return name.endswith((".txt.j2", ".txt"))


def text_sibling(name: str) -> str | None:
    """'email/invoice.html.j2' → 'email/invoice.txt.j2': the hand-written text/plain part."""
    for html_suffix, text_suffix in ((".html.j2", ".txt.j2"), (".html", ".txt"), (".j2", ".txt.j2")):
        if name.endswith(html_suffix):
            return name[: -len(html_suffix)] + text_suffix
    return None


def _language_candidates(locale: Locale) -> tuple[str, ...]:
    names = [str(locale), locale.language, FALLBACK_LANGUAGE]
    return tuple(dict.fromkeys(names))


def default(
    env: jinja2.Environment, filename: str, locale: Locale, dirs: tuple[Path, ...]
) -> tuple[jinja2.Template, Locale]:
    """The default template for the locale: '<fr_BE>/', then '<fr>/', then 'en/', with the
    locale to render it in. When the wording falls back to English, dates and amounts do
    too: "dated 2. Dezember 2026" in an English sentence reads as a bug."""
    for language in _language_candidates(locale):
        name = f"{language}/{filename}"
        if locate(name, dirs) is not None:
            try:
                template = env.get_template(name)
            except Exception as exc:
                raise as_template_error(exc, name, dirs) from exc
            same_language = language in (str(locale), locale.language)
            return template, locale if same_language else resolve_locale(language)
    raise TemplateError(
        f"default template {filename!r} is missing for {locale} and {FALLBACK_LANGUAGE}", part=filename
    )
