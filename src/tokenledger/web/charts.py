"""Geometry of the inline SVG charts and meters: numbers in, coordinates out (no styles)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tokenledger.budgets.service import Figures, limit_state
from tokenledger.money import percent

CHART_WIDTH = 640
CHART_HEIGHT = 220
PLOT_LEFT = 64
PLOT_RIGHT = 8
PLOT_TOP = 12
PLOT_BOTTOM = 28


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    show_label: bool
    value: Decimal
    title: str


@dataclass(frozen=True, slots=True)
class GridLine:
    y: float
    value: Decimal


@dataclass(frozen=True, slots=True)
class BarChart:
    width: int
    height: int
    bars: list[Bar]
    grid: list[GridLine]
    baseline: float
    plot_left: int
    plot_right: int


def _nice_ceiling(value: Decimal) -> Decimal:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above value."""
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    for step in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        candidate = step.scaleb(exponent)
        if candidate >= value:
            return candidate
    return Decimal(10).scaleb(exponent)


def bar_chart(points: list[tuple[str, Decimal, str]], label_every: int = 1) -> BarChart:
    """Bars for (label, value, title) points, oldest first, with four grid lines."""
    plot_width = CHART_WIDTH - PLOT_LEFT - PLOT_RIGHT
    plot_height = CHART_HEIGHT - PLOT_TOP - PLOT_BOTTOM
    top = _nice_ceiling(max((value for _, value, _ in points), default=Decimal(0)))
    slot = plot_width / max(1, len(points))
    gap = min(8.0, slot * 0.25)
    bars = []
    for index, (label, value, title) in enumerate(points):
        height = float(value / top) * plot_height if top else 0.0
        bars.append(
            Bar(
                x=round(PLOT_LEFT + index * slot + gap / 2, 2),
                y=round(PLOT_TOP + plot_height - height, 2),
                width=round(slot - gap, 2),
                height=round(max(height, 0.0), 2),
                label=label,
                show_label=index % label_every == 0 or index == len(points) - 1,
                value=value,
                title=title,
            )
        )
    grid = [
        GridLine(y=round(PLOT_TOP + plot_height * (1 - step / 4), 2), value=top * step / 4)
        for step in range(5)
    ]
    return BarChart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        bars=bars,
        grid=grid,
        baseline=PLOT_TOP + plot_height,
        plot_left=PLOT_LEFT,
        plot_right=CHART_WIDTH - PLOT_RIGHT,
    )


@dataclass(frozen=True, slots=True)
class Meter:
    """One consumption bar: used against a limit, with the warning tick and a state."""

    kind: str  # "credits" or "usd"
    used: int  # micro-credits or nano-USD
    limit: int | None
    warn_percent: int
    percent: float | None

    @property
    def fill(self) -> float:
        return 0.0 if self.percent is None else max(0.0, min(100.0, self.percent))

    @property
    def state(self) -> str:
        return limit_state(self.used, self.limit, self.warn_percent)


def meters(fig: Figures | None) -> list[Meter]:
    """The credit and USD budget bars of a license's figures (committed = used + held).

    Each state is the budget state's own rule (limit_state) for that limit.
    """
    if fig is None:
        return []
    warn = fig.license.budget_warning_percent
    result = []
    for kind, used, limit in (
        ("credits", fig.credits_committed, fig.credit_limit),
        ("usd", fig.usd_committed, fig.usd_limit),
    ):
        result.append(
            Meter(
                kind=kind,
                used=used,
                limit=limit,
                warn_percent=warn,
                percent=percent(used, limit) if limit else None,
            )
        )
    return result
