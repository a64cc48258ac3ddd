"""Render the artifact's loader.py from templates/ (jinja2); every value goes through repr or json."""

from __future__ import annotations

import json

from . import __version__


def render_loader(manifest: dict) -> str:
    import jinja2

    from .artifact import resource_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
                             autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["py"] = repr  # a Python literal: quotes and escapes whatever a checkpoint put in a string
    env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=True)
    return env.get_template("loader.py.j2").render(
        mwc_version=__version__, name=manifest["name"], source=manifest["source"]["checkpoint"],
        precision=manifest["precision"]["name"], device=manifest["device"], max_version=manifest["versions"]["max"])
