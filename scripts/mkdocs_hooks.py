"""MkDocs hook: links from a docs page to repository files outside ``docs/``.

On GitHub such links (``[train.py](../examples/mnist/train.py)``) open the file; the site
holds only ``docs/``, so MkDocs would report them as broken. This hook renders each one as
the repository path in code style, and reports a link whose target does not exist in the
repository as a warning (an error under ``mkdocs build --strict``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.flaxen_links")
LINK = re.compile(r"\[(?P<label>[^\]]+)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    repo = Path(config["config_file_path"]).resolve().parent
    page_dir = (docs / page.file.src_path).parent

    def rewrite(m: re.Match[str]) -> str:
        target = m["target"]
        if "://" in target or target.startswith(("mailto:", "/")):
            return m[0]
        path = (page_dir / target).resolve()
        if path.is_relative_to(docs):
            return m[0]  # MkDocs checks links inside the site itself
        if not path.is_relative_to(repo) or not path.exists():
            log.warning("Doc file '%s' links to '%s', which is not a file of the repository.",
                        page.file.src_path, target)
            return m[0]
        rel = path.relative_to(repo).as_posix()
        label = m["label"]
        return label if label.strip("`") == rel else f"{label} (`{rel}`)"

    return LINK.sub(rewrite, markdown)
