"""mkdocs hook: the site's home page is the README, so the two cannot drift apart.

``docs/index.md`` is a placeholder; at build time its text is replaced by ``README.md`` with the README's
``docs/`` link prefix dropped (a page that links ``docs/api.md`` from the repository root links ``api.md`` from
the site's root).
"""

import re
from pathlib import Path

_DOCS_LINK = re.compile(r"\]\(docs/")


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    readme = Path(config.config_file_path).parent / "README.md"
    return _DOCS_LINK.sub("](", readme.read_text(encoding="utf-8"))
