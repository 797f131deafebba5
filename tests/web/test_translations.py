"""German and English: the catalog is complete, and no English is left on a German page."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from babel.messages.pofile import read_po

from tests.conftest import NOW, event, ingest
from tests.web.conftest import read
from tests.web.test_pages import PAGES, org_pages
from tokenledger.web.i18n import TRANSLATIONS_DIR

PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _catalog():  # type: ignore[no-untyped-def]
    with (TRANSLATIONS_DIR / "de" / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle)


def test_every_message_has_a_german_translation_with_the_same_placeholders():
    catalog = _catalog()
    messages = [m for m in catalog if m.id]
    assert len(messages) > 300
    for message in messages:
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(strings), f"untranslated: {ids[0]!r}"
        for english, german in zip(ids, strings, strict=False):
            assert set(PLACEHOLDER.findall(english)) == set(PLACEHOLDER.findall(german)), english


def _english_patterns() -> list[re.Pattern[str]]:
    """A pattern for each English message that reads differently in German."""
    patterns = []
    for message in _catalog():
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        for english, german in zip(ids, strings, strict=False):
            if english == german:
                continue
            parts = PLACEHOLDER.split(english)
            # Literal text between placeholders; a placeholder matches anything.
            literal = [re.escape(re.sub(r"\s+", " ", part)) for part in parts[::2]]
            patterns.append(re.compile("^" + ".+?".join(literal) + "$"))
    return patterns


def test_no_english_text_is_left_on_a_german_page(admin_browser, make_tenant):
    tenant = make_tenant(license={"valid_from": datetime(2026, 1, 1, tzinfo=UTC)})
    make_tenant()
    ingest(
        admin_browser.client,
        tenant,
        event("2.5", at=NOW),
        event(None, at=NOW, model="house-model-7"),
    )
    admin_browser.post(f"/organizations/{tenant.org_id}/keys", {"name": "worker"})
    admin_browser.client.cookies.set("tl_lang", "de")
    patterns = _english_patterns()
    pages = (*PAGES, "/admin/users", *org_pages(tenant.org_id))
    pages += (f"/organizations/{tenant.org_id}/licenses/new", f"/licenses/{tenant.license_id}/edit")
    pages += ("/organizations/new", f"/organizations/{tenant.org_id}/edit")
    left = []
    for path in pages:
        response = admin_browser.get(path)
        assert response.status_code == 200, path
        assert '<html lang="de"' in response.text
        page = read(response.text)
        texts = page.texts + [
            value
            for tag, name, value in page.attributes
            if name in ("aria-label", "placeholder", "title", "data-confirm", "data-label")
        ]
        for text in texts:
            for pattern in patterns:
                if pattern.match(text):
                    left.append(f"{path}: {text!r}")
    # The login page too, without a session.
    admin_browser.client.cookies.delete("tl_session")
    login = read(admin_browser.get("/login").text)
    left += [f"/login: {t!r}" for t in login.texts for p in patterns if p.match(t)]
    assert not left, "\n".join(left)
