"""The day chart's money axis: round steps, and labels that are the grid's own values."""

from __future__ import annotations

from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from tokenledger.web.charts import bar_chart
from tokenledger.web.i18n import formatter


def axis(highest: str, language: str = "en") -> list[str]:
    chart = bar_chart([("1", Decimal(highest), "")])
    fmt = formatter(language, ZoneInfo("UTC"))
    return [fmt.usd(value, chart.places) for value in chart.grid]


@pytest.mark.parametrize(
    ("highest", "labels"),
    [
        # A top of 0.50 in fourths was labelled 0.12 and 0.38 for lines at 0.125 and 0.375.
        ("0.40", ["$0.50", "$0.40", "$0.30", "$0.20", "$0.10", "$0.00"]),
        ("0.19", ["$0.20", "$0.15", "$0.10", "$0.05", "$0.00"]),
        ("1.30", ["$2.00", "$1.50", "$1.00", "$0.50", "$0.00"]),
        ("7", ["$10", "$8", "$6", "$4", "$2", "$0"]),
        ("2400", ["$2,500", "$2,000", "$1,500", "$1,000", "$500", "$0"]),
        ("0.004", ["$0.005", "$0.004", "$0.003", "$0.002", "$0.001", "$0.000"]),
    ],
)
def test_the_axis_steps_are_round_and_each_label_is_its_line_s_value(
    highest: str, labels: list[str]
) -> None:
    assert axis(highest) == labels


def test_a_line_for_every_label_evenly_from_top_to_base() -> None:
    chart = bar_chart([("1", Decimal("0.40"), ""), ("2", Decimal("0.10"), "")])
    assert chart.grid_lines == [0, 20, 40, 60, 80, 100]
    assert chart.bars[0].height == 80.0  # 0.40 of 0.50
    assert bar_chart([("1", Decimal("1.30"), "")]).grid_lines == [0, 25, 50, 75, 100]


def test_german_labels_use_the_decimal_comma() -> None:
    # Babel puts a no-break space between the figure and the sign.
    assert axis("0.40", "de") == [f"0,{n}0\xa0$" for n in (5, 4, 3, 2, 1, 0)]
