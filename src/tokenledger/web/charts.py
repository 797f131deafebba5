"""Geometry of the inline SVG charts and meters: numbers in, coordinates out (no styles)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tokenledger.budgets.service import Figures, limit_state
from tokenledger.money import percent

SLOT = 10  # width of one bar's slot in the plot's own units; the plot is 100 high


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: Decimal
    title: str


@dataclass(frozen=True, slots=True)
class BarChart:
    """Bars in a plot of width `width` and height 100; grid values from the top down."""

    width: int
    bars: list[Bar]
    grid: list[Decimal]
    places: int

    @property
    def grid_lines(self) -> list[float]:
        """The grid's heights in the plot (0 the top, 100 the base), one per grid value."""
        steps = len(self.grid) - 1
        return [round(100 * n / steps, 3) for n in range(steps + 1)]


def _grid(top: Decimal) -> list[Decimal]:
    """Grid values from top (a _nice_ceiling) down to 0, a round step apart: fifths of 1
    and 5 times a power of ten (0.2, 1), fourths of 2 (0.5), fifths of 2.5 (0.5)."""
    leading = top.scaleb(-top.adjusted()).normalize()
    parts = 4 if leading == 2 else 5
    return [top * n / parts for n in range(parts, -1, -1)]


def _places(values: list[Decimal]) -> int:
    """The decimal places of a money axis that show every value exactly: none for whole
    numbers, else at least cents."""
    needed = max(0, *(-int(value.normalize().as_tuple().exponent) for value in values if value))
    return 0 if needed == 0 else max(2, needed)


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
    """Bars for (label, value, title) points, oldest first; a label on every n-th bar."""
    top = _nice_ceiling(max((value for _, value, _ in points), default=Decimal(0)))
    gap = 3.0 if len(points) > 12 else 2.5
    bars = []
    for index, (label, value, title) in enumerate(points):
        height = round(float(value / top) * 100, 3) if value > 0 else 0.0
        shown = index % label_every == 0 or index == len(points) - 1
        bars.append(
            Bar(
                x=index * SLOT + gap / 2,
                y=round(100 - height, 3),
                width=SLOT - gap,
                height=height,
                label=label if shown else "",
                value=value,
                title=title,
            )
        )
    grid = _grid(top)
    places = _places(grid)
    return BarChart(width=max(1, len(points)) * SLOT, bars=bars, grid=grid, places=places)


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
