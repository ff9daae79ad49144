"""Template rendering, one job per module.

- ``engine``: one message per channel (subject, text, HTML) from a plan's template;
- ``context``: the variables a template sees, from typed rows;
- ``sandbox``: the immutable Jinja sandbox and the bounded render;
- ``limits``: the bounds on size, loops, calls and time (SPEC B7);
- ``filters``: the Babel ``money`` and ``date`` filters and the render's locale;
- ``lookup``: template files, the templates directories and the default wording per language;
- ``html_text``: the text part of an HTML e-mail, and the HTML part of a text one;
- ``checks``: compile-only checks the config loader runs;
- ``errors``: ``TemplateError``, the one error a template's author can cause.
"""
