"""Every table, imported in one place for Alembic and for create-from-scratch checks."""

from tokenledger.alerts.models import Alert, Webhook, WebhookDelivery
from tokenledger.audit.models import AuditEntry
from tokenledger.auth.models import AdminUser, ApiKey, LoginAttempt
from tokenledger.budgets.models import Reservation
from tokenledger.db import Base
from tokenledger.licenses.models import CreditAdjustment, License
from tokenledger.organizations.models import Organization
from tokenledger.portal.models import PortalGeneration
from tokenledger.pricing.models import PriceOverrideRow
from tokenledger.provider_reports.models import (
    ProviderAccount,
    ProviderDriftAlert,
    ProviderReportDay,
    ProviderReportRow,
    ProviderReportTotal,
    ProviderSync,
    ProviderSyncLease,
)
from tokenledger.usage.models import (
    LicenseUsage,
    Refresh,
    TokenUsageMonthly,
    UsageDaily,
    UsageEvent,
    UsagePrice,
    UsageUtcDaily,
)

__all__ = [
    "AdminUser",
    "Alert",
    "ApiKey",
    "AuditEntry",
    "Base",
    "CreditAdjustment",
    "License",
    "LicenseUsage",
    "LoginAttempt",
    "Organization",
    "PortalGeneration",
    "PriceOverrideRow",
    "ProviderAccount",
    "ProviderDriftAlert",
    "ProviderReportDay",
    "ProviderReportRow",
    "ProviderReportTotal",
    "ProviderSync",
    "ProviderSyncLease",
    "Refresh",
    "Reservation",
    "TokenUsageMonthly",
    "UsageDaily",
    "UsageEvent",
    "UsagePrice",
    "UsageUtcDaily",
    "Webhook",
    "WebhookDelivery",
]
