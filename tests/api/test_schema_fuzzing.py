"""Schema fuzzing: schemathesis drives the real app from its own OpenAPI schema.

Valid and invalid requests for every operation, with admin and ingest credentials, on
a real SQLite database holding an organization, a license and an ingest key. Every
answer must be no 5xx, documented (status, content type, body schema), and invalid
requests must be refused. Bounded: a fixed number of examples per operation.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import add_admin, bearer, make_settings
from tests.factories import make_license, make_org
from tokenledger.app import create_app
from tokenledger.auth.service import create_api_key
from tokenledger.db import Database
from tokenledger.migrations import runner

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES = 25


@dataclass(frozen=True)
class Credentials:
    admin: dict[str, str]
    ingest: dict[str, str]

    def for_path(self, path: str) -> dict[str, str]:
        return self.ingest if path.startswith("/api/v1/") else self.admin


def _fuzzed_app() -> tuple[Any, Credentials]:
    """The app on a migrated SQLite file of its own, with data for the generated requests.

    Built when the module is collected: schemathesis parametrizes from a loaded schema
    (its fixture-based loading does not work with this pytest).
    """
    root = Path(tempfile.mkdtemp(prefix="tokenledger-fuzz-"))
    atexit.register(shutil.rmtree, root, True)
    settings_ = make_settings(f"sqlite:///{root / 'fuzz.db'}")
    database = Database(settings_)
    runner.upgrade(database.engine)
    with database.session(write=True) as session:
        org = make_org(session, name="Fuzz", slug="fuzz")
        make_license(session, org, token_budget_usd=Decimal(1000))
        _key, secret = create_api_key(session, "fuzz", None)
    credentials = Credentials(
        admin=bearer(add_admin(database, "fuzz@example.com")),
        ingest={"Authorization": f"Bearer {secret}"},
    )
    database.dispose()
    return create_app(settings_), credentials


APP, CREDENTIALS = _fuzzed_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_the_api_holds_under_generated_requests(case: Any) -> None:
    case.call_and_validate(headers=CREDENTIALS.for_path(case.path), checks=CHECKS)
