"""``dispatch config dump``: the configuration stored in the dispatch database, written in
the very format ``dispatch config load`` reads (docs/configuration.md).

So what is in force can be read, kept under version control, edited and loaded back:
loading a dump changes nothing. Each plan shows its **current** template version.
"""

from __future__ import annotations

import yaml
from sqlalchemy import Engine

from dispatch.config.file import dump_config


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_config_yaml(engine: Engine) -> str:
    """:func:`dump_config` as YAML text (block style, multi-line bodies as ``|`` blocks)."""
    body = {section: entries for section, entries in dump_config(engine).items() if entries}
    head = "# dispatch config dump — load it back with `dispatch config load FILE`\n"
    return head + (yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True) if body else "{}\n")
