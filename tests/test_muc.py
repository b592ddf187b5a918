"""
Tests for L{rosteradmin.muc.RoomKicker}: kicks in one room are serialised.
"""

from __future__ import annotations

import json

from tests.test_api import KICK_AUTH, ROOM, Api, kickAnswers, makeApi


def postKick(api: Api, nick: str) -> object:
    return api.http.post("http://api.invalid/muc_kick", headers={"Authorization": KICK_AUTH},
                         data=json.dumps({"nickname": nick, "muc": ROOM}).encode())


def test_kicksInOneRoomRunOneAtATime() -> None:
    """
    Three kicks in one room: the second goes out when the first is
    answered, and the third only when the second is (a lock dropped while
    the second held it let the third run alongside it).
    """
    api = makeApi()
    first, second = postKick(api, "A"), postKick(api, "B")
    api.http.flush()
    [kickA] = api.wire.sent()
    api.wire.receive(kickAnswers(None)(kickA))
    [kickB] = api.wire.sent()
    third = postKick(api, "C")
    api.http.flush()
    assert api.wire.sent() == []
    api.wire.receive(kickAnswers(None)(kickB))
    [kickC] = api.wire.sent()
    assert [k.query.item["nick"] for k in (kickA, kickB, kickC)] == ["A", "B", "C"]
    api.wire.receive(kickAnswers(None)(kickC))
    api.http.flush()
    assert [Api.result(d).code for d in (first, second, third)] == [200, 200, 200]
