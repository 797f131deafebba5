"""Rows that every ingest request and budget check reads, kept in memory: ingest keys,
organizations, prices, and the licenses in force (their terms, not their credits used).

A write of this process that changes one of their tables drops the cached rows of that
table when it commits (`db.notify_changed`, for every Database of the process on the same
database). Changes made by another process (a second worker, the command line) are seen
after at most the TTL (settings.cache_seconds): in the app, a thread of its own reads
everything cached again before the TTL is over and puts it in place at once
(`start_refreshing`), so that no request waits for the reload (at 20,000 organizations it
took 360 ms of the event loop, every 5 s); elsewhere, and should the thread fall behind,
everything is dropped at the TTL and read again by the requests that need it. Misses are
not cached: a key or organization created elsewhere works at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, or_, select
from sqlalchemy.orm import Session

from tokenledger.auth import service as auth_service
from tokenledger.auth.models import ApiKey
from tokenledger.db import Database
from tokenledger.licenses.models import LicenseTermsRow
from tokenledger.licenses.service import terms_in_force
from tokenledger.organizations.models import Organization
from tokenledger.organizations.refs import OrgRef
from tokenledger.pricing.engine import PriceBook
from tokenledger.pricing.overrides import price_book

# Up to this many organizations (and active or suspended licenses) are read all at once,
# and again after each TTL.
MAX_CACHED_ORGANIZATIONS = 20_000
MAX_CACHED_LICENSES = 20_000
# The default staleness bound across processes (TOKENLEDGER_CACHE_SECONDS), in the README.
TTL_SECONDS = 5.0
# The refreshing thread reads everything again after this part of the TTL: what it reads
# is in place before the TTL is over (a reload took 0.4 s at 20,000 organizations).
REFRESH_FRACTION = 0.8

log = logging.getLogger("tokenledger.hot")

_ALL_ORGANIZATIONS = select(Organization.id, Organization.slug).limit(MAX_CACHED_ORGANIZATIONS + 1)


def _all_organizations(session: Session) -> dict[str, OrgRef] | None:
    """Every organization by slug; None when there are too many to keep in memory."""
    rows = session.execute(_ALL_ORGANIZATIONS).all()
    if len(rows) > MAX_CACHED_ORGANIZATIONS:
        return None
    return {slug: OrgRef(i, slug) for i, slug in rows}


def _all_licenses(connection: Connection) -> dict[int, tuple[LicenseTermsRow, ...]] | None:
    """Every organization's active and suspended licenses, newest first (one absent has
    none); None when there are too many to keep in memory."""
    every = terms_in_force(connection, limit=MAX_CACHED_LICENSES + 1)
    if sum(len(terms) for terms in every.values()) > MAX_CACHED_LICENSES:
        return None
    return {org_id: tuple(terms) for org_id, terms in every.items()}


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A live ingest key: for one organization, or a service key (organization_id None)."""

    id: int
    organization_id: int | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyRef:
        return cls(key.id, key.organization_id, key.last_used_at)


class HotReads:
    def __init__(self, database: Database, ttl: float = TTL_SECONDS) -> None:
        self.database = database
        self.ttl = ttl
        self._lock = threading.Lock()
        self._keys: dict[str, KeyRef] = {}
        self._orgs_by_slug: dict[str, OrgRef] = {}
        self._orgs_by_id: dict[int, OrgRef] = {}
        self._book: PriceBook | None = None
        self._complete = False  # every organization has been read (since the last drop)
        # Active and suspended licenses by organization, newest first. Since the last drop:
        # read, all were asked for; complete, all are here (an organization absent has none).
        self._licenses: dict[int, tuple[LicenseTermsRow, ...]] = {}
        self._licenses_read = self._licenses_complete = False
        self._loaded_at = time.monotonic()
        # Raised by every drop: a row read before a drop is not stored after it.
        self._generation = 0
        self._refresher: threading.Thread | None = None
        self._asked = False  # read since the last refresh: an idle process reads nothing
        self._stop = threading.Event()
        database.caches.append(self.changed)

    def start_refreshing(self) -> None:
        """Read everything cached again in a thread of its own, each REFRESH_FRACTION of the
        TTL (the app's lifespan): the TTL then never makes a request wait for a reload."""
        if self.ttl <= 0 or self._refresher is not None:
            return
        self._stop.clear()
        self._refresher = threading.Thread(target=self._refresh_loop, name="hot-reads", daemon=True)
        self._refresher.start()

    def stop_refreshing(self) -> None:
        self._stop.set()
        thread, self._refresher = self._refresher, None
        if thread is not None:
            thread.join(timeout=10)

    def _refresh_loop(self) -> None:
        # A reading is due a part of the TTL after the rows in memory were read (by this
        # thread, or by requests after a drop): they do not grow older than the TTL.
        pause = 0.0
        while not self._stop.wait(pause):
            pause = self._loaded_at + self.ttl * REFRESH_FRACTION - time.monotonic()
            if pause > 0:
                continue
            if not self._asked:
                # Nothing read since the last refresh: the rows may age (the next request
                # past the TTL drops them), and an idle process reads nothing.
                pause = self.ttl * (1 - REFRESH_FRACTION) / 2
                continue
            self._asked = False
            try:
                placed = self.refresh()
            except Exception:
                # Nothing is put in place: the rows are dropped at the TTL, as without this.
                log.exception("reading the cached rows again failed")
                placed = False
            # Not placed (failed, or a write of this process dropped rows meanwhile): again
            # after a pause, not at once.
            pause = 0.0 if placed else self.ttl * (1 - REFRESH_FRACTION) / 2

    def refresh(self) -> bool:
        """Read the keys in memory, every organization, the prices and the licenses in force
        again, and put them in place at once. What a drop at the TTL would have the next
        requests read one by one; a drop by a write of this process meanwhile wins (the rows
        are then read again by the requests that need them). True: put in place."""
        started = time.monotonic()
        with self._lock:
            generation = self._generation
            secrets = list(self._keys)
        with self.database.session(write=False) as session:
            live = auth_service.resolve_api_keys(session, secrets)
            keys = {secret: KeyRef.of(key) for secret, key in live.items()}
            by_slug = _all_organizations(session)
            book = price_book(session)
            licenses = _all_licenses(session.connection())
        with self._lock:
            if generation != self._generation:
                return False
            self._keys = keys
            # Too many organizations, or licenses: read one by one as they are asked for.
            self._orgs_by_slug = by_slug or {}
            self._orgs_by_id = {ref.id: ref for ref in self._orgs_by_slug.values()}
            self._complete = True
            self._book = book
            self._licenses = licenses or {}
            self._licenses_read = True
            self._licenses_complete = licenses is not None
            # As of when the reading began: the TTL counts from there.
            self._loaded_at = started
        return True

    def changed(self, tables: frozenset[str]) -> None:
        with self._lock:
            self._generation += 1
            if "api_keys" in tables:
                self._keys = {}
            if "organizations" in tables:
                self._orgs_by_slug, self._orgs_by_id = {}, {}
                self._complete = False
            if "price_overrides" in tables:
                self._book = None
            if "licenses" in tables:
                self._drop_licenses()

    def _drop_licenses(self) -> None:
        self._licenses = {}
        self._licenses_read = self._licenses_complete = False

    def _expire(self) -> None:
        now = time.monotonic()
        self._asked = True
        if now - self._loaded_at > self.ttl:
            with self._lock:
                self._generation += 1
                self._keys, self._orgs_by_slug, self._orgs_by_id = {}, {}, {}
                self._complete = False
                self._book = None
                self._drop_licenses()
                self._loaded_at = now

    def cached_key(self, secret: str) -> KeyRef | None:
        """The key if it is in memory (no database read)."""
        self._expire()
        return self._keys.get(secret)

    def api_key(self, secret: str) -> KeyRef | None:
        """The live key for a presented secret, or None."""
        self._expire()
        found = self._keys.get(secret)
        if found is not None:
            return found
        generation = self._generation
        with self.database.session(write=False) as session:
            key = auth_service.resolve_api_key(session, secret)
            if key is None:
                return None
            found = KeyRef.of(key)
        with self._lock:
            if generation == self._generation:
                self._keys[secret] = found
        return found

    def key_used(self, secret: str, ref: KeyRef, at: datetime) -> None:
        """Remember a recorded use, so that the next one is recorded a minute later."""
        with self._lock:
            if self._keys.get(secret) is ref:
                self._keys[secret] = KeyRef(ref.id, ref.organization_id, at)

    def organizations(
        self, slugs: set[str], ids: set[int]
    ) -> tuple[dict[str, OrgRef], dict[int, OrgRef]]:
        """Organizations by slug and by id, for the references given (unknown ones absent)."""
        self._expire()
        if not self._complete:
            self._load_all()
        by_slug = {s: self._orgs_by_slug[s] for s in slugs if s in self._orgs_by_slug}
        by_id = {i: self._orgs_by_id[i] for i in ids if i in self._orgs_by_id}
        missing_slugs, missing_ids = slugs - by_slug.keys(), ids - by_id.keys()
        if missing_slugs or missing_ids:
            # Created since the last load (or more than fit in memory): asked for.
            for ref in self._load_organizations(missing_slugs, missing_ids):
                if ref.slug in slugs:
                    by_slug[ref.slug] = ref
                if ref.id in ids:
                    by_id[ref.id] = ref
        return by_slug, by_id

    def _load_all(self) -> None:
        """Every organization at once, when there are not too many: one query per TTL
        instead of one per organization first seen."""
        generation = self._generation
        with self.database.session(write=False) as session:
            by_slug = _all_organizations(session)
        with self._lock:
            if generation != self._generation:
                return
            self._complete = True
            if by_slug is None:
                return  # too many: loaded one by one as they are asked for
            self._orgs_by_slug = by_slug
            self._orgs_by_id = {ref.id: ref for ref in by_slug.values()}

    def _load_organizations(self, slugs: set[str], ids: set[int]) -> list[OrgRef]:
        conditions = []
        if slugs:
            conditions.append(Organization.slug.in_(slugs))
        if ids:
            conditions.append(Organization.id.in_(ids))
        generation = self._generation
        with self.database.session(write=False) as session:
            refs = [
                OrgRef(org_id, slug)
                for org_id, slug in session.execute(
                    select(Organization.id, Organization.slug).where(or_(*conditions))
                )
            ]
        with self._lock:
            if generation == self._generation:
                by_slug, by_id = dict(self._orgs_by_slug), dict(self._orgs_by_id)
                for ref in refs:
                    by_slug[ref.slug] = ref
                    by_id[ref.id] = ref
                self._orgs_by_slug, self._orgs_by_id = by_slug, by_id
        return refs

    def price_book(self) -> PriceBook:
        self._expire()
        book = self._book
        if book is None:
            generation = self._generation
            with self.database.session(write=False) as session:
                book = price_book(session)
            with self._lock:
                if generation == self._generation:
                    self._book = book
        return book

    def licenses(self, org_id: int) -> tuple[LicenseTermsRow, ...]:
        """The organization's active and suspended licenses, newest first: the ones that
        may govern it (budgets.service.governing). Their credits used are not here."""
        self._expire()
        found = self._licenses.get(org_id)
        if found is not None:
            return found
        if not self._licenses_read:
            self._load_all_licenses()
            found = self._licenses.get(org_id)
            if found is not None:
                return found
        if self._licenses_complete:
            return ()
        # More than fit in memory at once (or changed meanwhile): this organization's.
        generation = self._generation
        with self.database.engine.connect() as connection:
            found = tuple(terms_in_force(connection, [org_id]).get(org_id, ()))
        with self._lock:
            if generation == self._generation:
                self._licenses = {**self._licenses, org_id: found}
        return found

    def all_licenses(self) -> Mapping[int, Sequence[LicenseTermsRow]] | None:
        """Every organization's active and suspended licenses, newest first (one absent has
        none); None when there are too many to keep in memory."""
        self._expire()
        if not self._licenses_read:
            self._load_all_licenses()
        return self._licenses if self._licenses_complete else None

    def _load_all_licenses(self) -> None:
        """Every active and suspended license at once, when there are not too many: one
        query per TTL instead of one per organization first asked for."""
        generation = self._generation
        with self.database.engine.connect() as connection:
            licenses = _all_licenses(connection)
        with self._lock:
            if generation != self._generation:
                return
            self._licenses_read = True
            if licenses is None:
                return  # too many: read one organization at a time
            self._licenses = licenses
            self._licenses_complete = True
