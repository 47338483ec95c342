"""Sphinx extension: drop repeated <script> entries from each page.

With Jupyter Book 1.x, sphinx-thebe's configuration script can be registered twice, and the second
`const THEBE_JS_URL = ...` is a JavaScript error in the reader's browser console. Keep the first of
each identical script.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        name = getattr(script, "filename", script) or ""     # None and "" both mean inline
        key = (str(name), tuple(sorted((k, str(v)) for k, v in
                                       getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    if "script_files" in context:
        context["script_files"][:] = unique


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
