"""
bench/streamtap.py: what each stanza on the component stream counts as.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bench.streamtap import StreamTap


def kind(tap: StreamTap, xml: str) -> str:
    return tap._kind(ET.fromstring(xml))


def test_delegationAndAnswer() -> None:
    """
    A delegated query and the iq result with its id count as one query
    and its answer, per login.
    """
    tap = StreamTap(0)
    query = kind(tap, "<iq xmlns='jabber:component:accept' type='set' id='d1'>"
                      "<delegation xmlns='urn:xmpp:delegation:2'/></iq>")
    answer = kind(tap, "<iq xmlns='jabber:component:accept' type='result' id='d1'/>")
    assert (query, answer) == ("delegated query", "delegated query result")
    tap.counts[("to component", query)] += 2
    tap.counts[("to server", answer)] += 2
    tap.bytes["to server"] += 1000
    assert tap.perLogin(2) == {"stanzas/login to component: delegated query": 1.0,
                               "stanzas/login to server: delegated query result": 1.0,
                               "bytes/login to server": 500.0}


def test_privilegedKinds() -> None:
    tap = StreamTap(0)
    assert kind(tap, "<iq type='get' id='p1'><query xmlns='jabber:iq:roster'/></iq>") == "privileged roster get"
    assert kind(tap, "<iq type='set' id='p2'><query xmlns='urn:x-rosteradmin:roster:0'/></iq>") == (
        "mod_rosteradmin_roster write")
    assert kind(tap, "<iq type='set' id='p3'><privileged_iq xmlns='urn:xmpp:privilege:2'/></iq>") == "privileged push"
    assert kind(tap, "<iq type='error' id='p2'/>") == "mod_rosteradmin_roster write error"
    assert kind(tap, "<iq type='result' id='unknown'/>") == "other iq result"
    assert kind(tap, "<presence/>") == "presence"
