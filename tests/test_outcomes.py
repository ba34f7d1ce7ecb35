"""What the engine answers with. The daemon dispatches on the Action union and reads every
action's event and address (to log it, to tell refused starts apart), so each outcome must be
in the union and begin with those two fields."""

from __future__ import annotations

import inspect
from typing import get_args

from tportknockd.matching import outcomes


def outcome_classes() -> list[type]:
    return [
        value
        for _, value in inspect.getmembers(outcomes, inspect.isclass)
        if value.__module__ == outcomes.__name__
    ]


def test_every_outcome_is_an_action() -> None:
    classes = outcome_classes()
    assert outcomes.RunStart in classes  # found them
    assert set(get_args(outcomes.Action)) == set(classes)


def test_every_action_names_its_event_and_address_first() -> None:
    for cls in get_args(outcomes.Action):
        assert cls._fields[:2] == ("event", "address"), cls.__name__
