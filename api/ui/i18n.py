"""The pages' languages: gettext catalogs (Babel's .po files under api/locale), read at start.

The .po files are the one source: they are compiled in memory when the app starts, so a fresh
checkout needs no build step and no compiled .mo file is committed. `make messages` re-extracts the
strings from the templates and api/ui (babel.cfg) and updates the catalogs.
"""

from __future__ import annotations

import gettext
import io
from functools import cache
from pathlib import Path

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "messages"
DEFAULT_LANGUAGE = "en"
# Code -> the language's own name, as the switch shows it.
LANGUAGES = {"en": "English", "zh_Hant": "繁體中文"}


def N_(message: str) -> str:
    """Marks a string for extraction; it is translated where it is shown."""
    return message


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog of one language; English is the source language and needs none."""
    if language == DEFAULT_LANGUAGE:
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with open(LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po", "rb") as handle:
        catalog = read_po(handle, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def negotiate(chosen: str | None, accept_language: str | None) -> str:
    """The language the person chose, else the first one their browser asks for that we have."""
    if chosen in LANGUAGES:
        return chosen
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower().replace("-", "_")
        if tag.startswith("zh") and not tag.startswith(("zh_cn", "zh_sg", "zh_hans")):
            return "zh_Hant"
        if tag.startswith("en"):
            return "en"
    return DEFAULT_LANGUAGE
