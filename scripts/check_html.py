"""Open every page of the built book in headless Chromium and check what a reader sees.

First, every internal link of every built page must point to an existing file and #anchor.
Then for each page listed in _toc.yml: no console errors or page errors, every image loaded, and on
pages with math, MathJax rendered it (mjx-container elements, no mjx-merror). The machine is offline,
so MathJax is served from a local copy of the npm `mathjax@3` package in place of its CDN, and other
external requests (the Thebe and Colab scripts a reader's browser would fetch) get an empty answer.
Full-page screenshots of a few chapters are saved for the report.

    python scripts/check_html.py --mathjax .cache/mathjax/node_modules/mathjax/es5
"""
import argparse
import functools
import html.parser
import http.server
import pathlib
import re
import shutil
import sys
import threading
import urllib.parse

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toc_notebooks import ROOT, files  # noqa: E402

MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/"


def serve(directory):
    """A quiet HTTP server for `directory` on a free loopback port; returns (server, base URL)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/"


def pages():
    """HTML paths (relative to the build) of every page in the TOC, root first."""
    import yaml
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [f + ".html" for f in [toc["root"], *files(toc)]]


class _Anchors(html.parser.HTMLParser):
    """Collects the ids and the link targets (href) of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.hrefs = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def broken_links(root):
    """Internal links of every built page whose file or #anchor does not exist: [(page, href)]."""
    parsed = {}

    def parse(path):
        if path not in parsed:
            parsed[path] = _Anchors()
            parsed[path].feed(path.read_text(errors="replace"))
        return parsed[path]

    broken = []
    for page in sorted(root.rglob("*.html")):
        if "_static" in page.parts:
            continue
        for href in parse(page).hrefs:
            parts = urllib.parse.urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
                continue
            target = (page.parent / urllib.parse.unquote(parts.path)).resolve() if parts.path \
                else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append((page.relative_to(root), href))
            elif parts.fragment and target.suffix == ".html" and \
                    urllib.parse.unquote(parts.fragment) not in parse(target).ids:
                broken.append((page.relative_to(root), href))
    return broken


NUMPY_REPR = re.compile(r"np\.(?:float|int|uint|bool|complex)\w*\([^)]*\)")  # NumPy 2's repr


def check_page(page, url, mathjax_dir, notebook=False):
    """Problems found on one page (a list of strings; empty means fine). Chapter notebooks must
    also offer the Colab and Binder launch buttons; no output may show a NumPy scalar's repr."""
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
    page.goto(url, wait_until="load")
    broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && "
                           "i.naturalWidth > 0)).map(i => i.src)")
    problems += [f"image not loaded: {src}" for src in broken]
    for host in ("colab.research.google.com", "mybinder.org") if notebook else ():
        if page.locator(f'a[href*="{host}"]').count() == 0:
            problems.append(f"no launch button for {host}")
    outputs = " ".join(page.locator(".cell_output").all_inner_texts())
    problems += [f"NumPy scalar repr in an output (print float(...) or format it): {m}"
                 for m in sorted(set(NUMPY_REPR.findall(outputs)))]
    if page.locator(".math").count() > 0:
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                               timeout=20000)
        page.evaluate("MathJax.startup.promise")
        rendered = page.locator("mjx-container").count()
        errors = page.locator("mjx-merror").count()
        if rendered == 0:
            problems.append("MathJax rendered nothing on a page with math")
        if errors:
            problems.append(f"{errors} MathJax errors")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default=str(ROOT / "_build" / "html"))
    parser.add_argument("--mathjax", required=True, help="folder holding tex-mml-chtml.js")
    parser.add_argument("--shots", default=str(ROOT / "_build" / "screenshots"))
    parser.add_argument("--shot-pages", nargs="*", default=["book/02-batchnorm.html",
                                                             "book/03-layernorm.html"])
    args = parser.parse_args()
    mathjax_dir = pathlib.Path(args.mathjax)
    if not (mathjax_dir / "tex-mml-chtml.js").exists():
        sys.exit(f"check_html: no tex-mml-chtml.js in {mathjax_dir}; npm install mathjax@3 first")
    links = broken_links(pathlib.Path(args.html))
    for page, href in links:
        print(f"FAIL broken internal link in {page}: {href}")
    server, base = serve(args.html)
    shots = pathlib.Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)

    def route(r):
        """Local MathJax for its CDN, an empty answer for other external hosts."""
        url = r.request.url
        if url.startswith(MATHJAX_CDN):
            local = mathjax_dir / url[len(MATHJAX_CDN):].split("?")[0]
            if local.exists():
                return r.fulfill(path=str(local))
            return r.fulfill(status=404)
        if url.startswith(base):
            return r.continue_()
        return r.fulfill(status=200, body="", content_type="text/plain")

    failures = 0
    with sync_playwright() as p:
        chromium = next(filter(None, map(shutil.which, ["chromium", "chromium-browser",
                                                         "google-chrome"])), None)
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", route)
        for rel in pages():
            page = context.new_page()
            is_notebook = (ROOT / rel).with_suffix(".ipynb").exists()
            problems = check_page(page, base + rel, mathjax_dir, is_notebook)
            if rel in args.shot_pages:
                name = pathlib.Path(rel).stem + ".png"
                page.screenshot(path=str(shots / name), full_page=True)
            page.close()
            failures += bool(problems)
            print(f"{'FAIL' if problems else 'ok  '} {rel}")
            for msg in problems:
                print(f"     {msg}")
        browser.close()
    server.shutdown()
    print(f"broken internal links: {len(links)}")
    failures += bool(links)
    print(f"check_html: {len(pages()) + 1 - failures} passed, {failures} failed")
    sys.exit(1 if failures or links else 0)


if __name__ == "__main__":
    main()
