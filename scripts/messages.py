"""Extract the web UI's messages and update the German catalog (`make messages`).

New messages arrive untranslated (the UI then shows the English text, and the
translation test names them); translations of messages that are gone are dropped.
"""

from __future__ import annotations

from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po
from jinja2.ext import babel_extract

WEB = Path(__file__).resolve().parent.parent / "src" / "tokenledger" / "web"
KEYWORDS = {"_": None, "N_": None, "_n": (1, 2), "gettext": None, "ngettext": (1, 2)}
METHODS = [
    ("*.py", "python"),
    ("templates/*.html", babel_extract),
    ("templates/portal/*.html", babel_extract),
]


def extract() -> Catalog:
    template = Catalog(project="tokenledger")
    for filename, lineno, message, comments, context in extract_from_dir(
        WEB, METHODS, keywords=KEYWORDS  # type: ignore[arg-type]
    ):
        template.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return template


def main() -> None:
    template = extract()
    for po in sorted((WEB / "translations").glob("*/LC_MESSAGES/messages.po")):
        with po.open("rb") as handle:
            catalog = read_po(handle)
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        with po.open("wb") as handle:
            write_po(handle, catalog, omit_header=False, no_location=True, sort_output=True, width=100)
        missing = [m.id for m in catalog if m.id and not m.string]
        print(f"{po.relative_to(WEB)}: {len(catalog)} messages, {len(missing)} untranslated")


if __name__ == "__main__":
    main()
