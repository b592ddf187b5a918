"""
Tests for the component on the wire: the handshake burst, delegated and
direct roster queries, privileged sync, presence tracking, disco and ping,
stream errors and keepalives.  Each test runs the real component stream over
a StringTransport with a web app served by StubTreq.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.words.xish import domish

from rosteradmin.rosterwrites import NS_BULK_ROSTER
from rosteradmin.roster import NS_ROSTER, Contact, Roster
from rosteradmin.slots import MAX_SYNC_IN_FLIGHT, RESERVED_FOR_CLIENTS
from tests.helpers import COMPONENT, DOMAIN, PERMISSIONS_2, STREAM_HEADER, ComponentOnWire, WebApp

ALICE_ROSTER = {
    "bob@example.org": {"name": "Bob", "groups": ["Friends"]},
    "carol@example.org": {"name": "Carol"},
}


def envelope(inner: str, version: int = 2, sender: str = DOMAIN, stanzaID: str = "env1") -> str:
    return (
        f"<iq type='set' from='{sender}' to='{COMPONENT}' id='{stanzaID}'>"
        f"<delegation xmlns='urn:xmpp:delegation:{version}'><forwarded xmlns='urn:xmpp:forward:0'>"
        f"{inner}</forwarded></delegation></iq>"
    )


def rosterGet(sender: str = "alice@example.org/res", ver: str | None = None, to: str | None = None,
              iqType: str = "get") -> str:
    verAttr = f" ver='{ver}'" if ver is not None else ""
    toAttr = f" to='{to}'" if to is not None else ""
    payload = f"<query xmlns='{NS_ROSTER}'{verAttr}/>"
    if iqType == "set":
        payload = f"<query xmlns='{NS_ROSTER}'><item jid='mallory@example.org'/></query>"
    return f"<iq xmlns='jabber:client' type='{iqType}' from='{sender}'{toAttr} id='c1'>{payload}</iq>"


def innerIQ(reply: domish.Element) -> domish.Element:
    """
    The client-facing iq inside a delegation reply.
    """
    [delegation] = list(reply.elements())
    [forwarded] = list(delegation.elements())
    [inner] = list(forwarded.elements())
    return inner


def noBulkWrites(iq: domish.Element) -> bool:
    """
    Whether C{iq} is a many-items write, which a server without contrib's
    mod_rosteradmin_roster refuses.
    """
    return iq.query is not None and iq.query.uri == NS_BULK_ROSTER


def noBulk(iq: domish.Element) -> str:
    return (f"<iq type='error' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'><error type='cancel'>"
            "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")


def serverAnswers(stored: str = "") -> object:
    """
    Answer privileged roster gets with C{stored} items and sets with results,
    as Prosody with mod_privilege alone does (many-items writes are
    refused: no mod_rosteradmin_roster).
    """

    def reply(iq: domish.Element) -> str | None:
        if iq.name != "iq" or iq.getAttribute("type") not in ("get", "set"):
            return None
        if noBulkWrites(iq):
            return noBulk(iq)
        payload = f"<query xmlns='{NS_ROSTER}'>{stored}</query>" if iq["type"] == "get" else ""
        return f"<iq type='result' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'>{payload}</iq>"

    return reply


class StoringServer:
    """
    Answers privileged roster gets with what the privileged sets before
    stored for that user, as Prosody does (other iq requests get results):
    for tests whose later syncs read back earlier writes.
    """

    def __init__(self) -> None:
        self.items: dict[str, dict[str, str]] = {}

    def __call__(self, iq: domish.Element) -> str | None:
        if iq.name != "iq" or iq.getAttribute("type") not in ("get", "set"):
            return None
        if noBulkWrites(iq):
            return noBulk(iq)
        roster = self.items.setdefault(iq["to"], {})
        payload = ""
        if iq["type"] == "get":
            payload = f"<query xmlns='{NS_ROSTER}'>{''.join(roster.values())}</query>"
        elif iq.query is not None and iq.query.uri == NS_ROSTER:
            for item in iq.query.elements():
                if item.getAttribute("subscription") == "remove":
                    roster.pop(item["jid"], None)
                else:
                    roster[item["jid"]] = item.toXml()
        return f"<iq type='result' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'>{payload}</iq>"


def connected(webApp: WebApp | None = None, burst: str = PERMISSIONS_2) -> ComponentOnWire:
    wire = ComponentOnWire(webApp or WebApp({"alice": ALICE_ROSTER}))
    wire.handshake(burst)
    return wire


def test_handshakeBurstIsHandled() -> None:
    """
    Permissions, the delegation advertisement and the delegation-node disco
    queries that arrive with the handshake are all taken into account.
    """
    wire = ComponentOnWire()
    wire.handshake(
        PERMISSIONS_2
        + f"<message from='{DOMAIN}'><delegation xmlns='urn:xmpp:delegation:2'>"
        "<delegated namespace='jabber:iq:roster'/></delegation></message>"
        f"<iq type='get' from='{DOMAIN}' to='{COMPONENT}' id='d1'>"
        "<query xmlns='http://jabber.org/protocol/disco#info' node='urn:xmpp:delegation:2::jabber:iq:roster'/></iq>"
    )
    assert wire.component.status.connected
    assert wire.component.privileges.permissions.canReadAndWriteRosters
    assert wire.component.privileges.permissions.canPush
    assert wire.component.delegation.delegated == {NS_ROSTER: "urn:xmpp:delegation:2"}
    [disco] = wire.sent()
    assert disco["type"] == "result" and disco["id"] == "d1"
    assert disco.query["node"] == "urn:xmpp:delegation:2::jabber:iq:roster"


def test_firstQuerySyncsServerBeforeAnswering() -> None:
    """
    On a miss the roster is fetched, the server's stored roster read, each
    missing item written with one privileged set, and only then is the
    client answered, with the web app's names, groups and subscription both.
    """
    wire = connected()
    wire.receive(envelope(rosterGet()))
    sent = wire.answerRequests(serverAnswers())
    kinds = [(s["type"], s["to"]) for s in sent]
    assert kinds == [
        ("get", "alice@example.org"),
        ("set", "alice@example.org"),
        ("set", "alice@example.org"),
        ("result", DOMAIN),
    ]
    written = sorted(s.query.item["jid"] for s in sent[1:3])
    assert written == ["bob@example.org", "carol@example.org"]
    assert all(s.query.item["subscription"] == "both" for s in sent[1:3])
    reply = sent[-1]
    assert reply["id"] == "env1" and reply["from"] == COMPONENT
    inner = innerIQ(reply)
    assert (inner.uri, inner["type"], inner["id"], inner["to"], inner["from"]) == (
        "jabber:client", "result", "c1", "alice@example.org/res", "alice@example.org")
    items = {i["jid"]: i for i in inner.query.elements()}
    assert items["bob@example.org"]["name"] == "Bob"
    assert [str(g) for g in items["bob@example.org"].elements()] == ["Friends"]
    assert {i["subscription"] for i in items.values()} == {"both"}
    assert inner.query["ver"]


def test_storedRosterIsReconciled() -> None:
    """
    Items the server holds but the web app does not list are removed, and a
    listed item whose stored subscription is not both is rewritten.
    """
    wire = connected()
    wire.receive(envelope(rosterGet()))
    stored = (
        "<item jid='bob@example.org' name='Bob' subscription='from'><group>Friends</group></item>"
        "<item jid='carol@example.org' name='Carol' subscription='both'/>"
        "<item jid='mallory@example.org' subscription='none' ask='subscribe'/>"
    )
    sent = wire.answerRequests(serverAnswers(stored))
    sets = {s.query.item["jid"]: s.query.item["subscription"] for s in sent if s["type"] == "set"}
    assert sets == {"bob@example.org": "both", "mallory@example.org": "remove"}


def test_secondQueryServedFromCache() -> None:
    """
    A second roster get is answered without a second fetch or sync.
    """
    wire = connected()
    wire.receive(envelope(rosterGet()))
    wire.answerRequests(serverAnswers())
    wire.receive(envelope(rosterGet(), stanzaID="env2"))
    [reply] = wire.sent()
    assert reply["id"] == "env2" and len(list(innerIQ(reply).query.elements())) == 2
    assert wire.webApp.requests["alice"] == 1


def test_currentVersionGetsEmptyResult() -> None:
    """
    XEP-0237: a query with the current version gets a result with no query.
    """
    wire = connected(burst="")
    wire.receive(envelope(rosterGet()))
    [first] = wire.sent()
    version = innerIQ(first).query["ver"]
    wire.receive(envelope(rosterGet(ver=version), stanzaID="env2"))
    [reply] = wire.sent()
    inner = innerIQ(reply)
    assert inner["type"] == "result" and list(inner.elements()) == []
    wire.receive(envelope(rosterGet(ver="stale"), stanzaID="env3"))
    [full] = wire.sent()
    assert innerIQ(full).query["ver"] == version


def test_delegation1IsAnsweredInKind() -> None:
    """
    ejabberd's urn:xmpp:delegation:1 envelope is answered in the same
    namespace, the inner result from the user's bare JID to the requester
    (ejabberd drops a reply whose from is not the request's to); without
    privileges no sync is attempted.
    """
    wire = connected(burst="")
    wire.receive(envelope(rosterGet(), version=1))
    [reply] = wire.sent()
    [delegation] = list(reply.elements())
    assert delegation.uri == "urn:xmpp:delegation:1"
    inner = innerIQ(reply)
    assert (inner["type"], inner["from"], inner["to"]) == ("result", "alice@example.org", "alice@example.org/res")
    assert wire.backend.unsynced == {"alice"}


def test_rosterSetRefused() -> None:
    """
    A delegated roster set gets not-allowed (cancel) with a text, inside the
    envelope, and nothing is fetched or written.
    """
    wire = connected()
    wire.receive(envelope(rosterGet(iqType="set")))
    [reply] = wire.sent()
    assert reply["type"] == "result"
    inner = innerIQ(reply)
    assert (inner["type"], inner["from"], inner["to"]) == ("error", "alice@example.org", "alice@example.org/res")
    assert inner.error["type"] == "cancel"
    assert inner.error.firstChildElement().name == "not-allowed"
    assert "web application" in str(inner.error.text)
    assert wire.webApp.requests == {}


def test_otherUsersRosterForbidden() -> None:
    """
    bob asking for alice's roster gets forbidden, and alice's roster is
    never fetched.
    """
    wire = connected()
    wire.receive(envelope(rosterGet(sender="bob@example.org/res", to="alice@example.org")))
    [reply] = wire.sent()
    inner = innerIQ(reply)
    assert inner["type"] == "error" and inner.error.firstChildElement().name == "forbidden"
    assert (inner["from"], inner["to"]) == ("alice@example.org", "bob@example.org/res")
    assert wire.webApp.requests == {}


def test_ownBareJIDAsTargetServed() -> None:
    """
    A query addressed to the requester's own bare JID is served.
    """
    wire = connected(burst="")
    wire.receive(envelope(rosterGet(to="alice@example.org")))
    [reply] = wire.sent()
    assert (innerIQ(reply)["type"], innerIQ(reply)["from"]) == ("result", "alice@example.org")


def test_ownBareJIDComparedNormalised() -> None:
    """
    A query addressed to the requester's own bare JID in another case is
    served, and answered from the JID exactly as addressed.
    """
    wire = connected(burst="")
    wire.receive(envelope(rosterGet(sender="alice@example.org/res", to="ALICE@Example.ORG")))
    [reply] = wire.sent()
    inner = innerIQ(reply)
    assert (inner["type"], inner["from"]) == ("result", "ALICE@Example.ORG")
    assert len(list(inner.query.elements())) == 2


def test_envelopeFromUntrustedSenderRefused() -> None:
    """
    A delegation envelope from anyone but the managed domain gets an outer
    forbidden error and is not served.
    """
    wire = connected()
    wire.receive(envelope(rosterGet(), sender="mallory@example.org/x"))
    [reply] = wire.sent()
    assert reply["type"] == "error" and reply["to"] == "mallory@example.org/x"
    assert (reply.error["type"], reply.error.firstChildElement().name) == ("auth", "forbidden")
    assert wire.webApp.requests == {}


def ownRosterSet(sender: str = COMPONENT, stanzaID: str = "r1") -> str:
    """
    A privileged roster set of ours, as ejabberd forwards it back to us.
    """
    return (f"<iq xmlns='jabber:client' type='set' from='{sender}' to='alice@example.org' id='{stanzaID}'>"
            f"<query xmlns='{NS_ROSTER}'><item jid='bob@example.org' subscription='both'/></query></iq>")


def test_ownRequestDelegatedBackRefused() -> None:
    """
    The component's own roster iqs delegated back to it (ejabberd) get an
    error inside the envelope, from the user to the component, so they fail
    at once; one error explains the server configuration, however many
    come; privileged sync stops, and clients are still answered.
    """
    wire = connected()
    assert wire.component.privileges.canSync()
    with capturedLogs() as events:
        wire.receive(envelope(ownRosterSet(), version=1))
        wire.receive(envelope(ownRosterSet(f"x@{COMPONENT}/r", "r2"), version=1, stanzaID="env2"))
        wire.receive(envelope(ownRosterSet(stanzaID="r3"), version=1, stanzaID="env3"))
    replies = wire.sent()
    assert [r["id"] for r in replies] == ["env1", "env2", "env3"]
    for reply, stanzaID in zip(replies, ["r1", "r2", "r3"]):
        inner = innerIQ(reply)
        assert reply["type"] == "result"
        assert (inner["type"], inner["id"], inner["from"]) == ("error", stanzaID, "alice@example.org")
        assert inner.error.firstChildElement().name == "not-allowed"
    assert [innerIQ(r)["to"] for r in replies] == [COMPONENT, f"x@{COMPONENT}/r", COMPONENT]
    errors = [e for e in events if e["log_level"] >= LogLevel.warn]
    assert len(errors) == 1 and errors[0]["log_level"] == LogLevel.error
    assert "#1737" in formatEvent(errors[0]) and NS_ROSTER in formatEvent(errors[0])
    assert not wire.component.privileges.canSync()
    assert wire.webApp.requests == {}
    wire.receive(envelope(rosterGet(), stanzaID="env4"))
    [reply] = wire.sent()
    assert innerIQ(reply)["type"] == "result" and wire.backend.unsynced == {"alice"}


def test_refreshReportsWritesTheServerCannotTake() -> None:
    """
    Once the server has sent our own roster requests back, a refresh still
    updates the cache but reports each user as an error saying why, and
    the health check names the problem: it does not claim the rosters
    reached the server.
    """
    wire = connected()
    with capturedLogs():
        wire.receive(envelope(ownRosterSet(), version=1))
    wire.sent()
    refresh = wire.backend.refresh(["alice"])
    wire.answerRequests(serverAnswers())
    summary = refresh.result
    assert (summary.updated, list(summary.failures)) == (0, ["alice"])
    assert "sends rosteradmin's own roster requests back" in summary.failures["alice"]
    assert wire.backend.cache.peek("alice") is not None
    assert wire.component.privileges.syncRefusal == summary.failures["alice"].split(": ", 1)[1]


def test_privilege1CannotPushSaysSoOnce() -> None:
    """
    With urn:xmpp:privilege:1 (ejabberd), which has no iq permission, a
    refresh pushes nothing and one warning says that clients see the
    changes at their next roster get.
    """
    permissions1 = PERMISSIONS_2.replace("urn:xmpp:privilege:2", "urn:xmpp:privilege:1")
    wire = connected(burst=permissions1)
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(serverAnswers())
    with capturedLogs() as events:
        for name in ("Bobby", "Robert"):
            wire.webApp.rosters["alice"] = {"bob@example.org": {"name": name}}
            refresh = wire.backend.refresh(["alice"])
            sent = wire.answerRequests(serverAnswers())
            assert refresh.result.updated == 1
            assert not [s for s in sent if s.firstChildElement().name == "privileged_iq"]
    # serverAnswers() stores nothing, so each refresh also finds (and warns
    # of) drift; the push warning is said once.
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn and "drift" not in formatEvent(e)]
    assert len(warnings) == 1 and "not pushed" in warnings[0] and "urn:xmpp:privilege:1" in warnings[0]


def test_everyPushCarriesItsVersion() -> None:
    """
    Each roster push carries the version of the roster once it is applied
    (RFC 6121 §2.6.3): a client asking with an intermediate version gets
    the full roster, with the last one an empty result.
    """
    wire, server = connected(), StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    wire.webApp.rosters["alice"] = {"bob@example.org": {"name": "Bobby"}, "dave@example.org": {}}
    refresh = wire.backend.refresh(["alice"])
    sent = wire.answerRequests(server)
    assert refresh.called
    pushes = [s.firstChildElement().firstChildElement() for s in sent
              if s.firstChildElement() is not None and s.firstChildElement().name == "privileged_iq"]
    bob, carol, dave = (Contact("bob@example.org", "Bobby", ()), Contact("carol@example.org", "Carol", ()),
                        Contact("dave@example.org", None, ()))
    expected = [("bob@example.org", Roster([bob, carol]).version),
                ("dave@example.org", Roster([bob, carol, dave]).version),
                ("carol@example.org", Roster([bob, dave]).version)]
    assert [(p.query.item["jid"], p.query.getAttribute("ver")) for p in pushes] == expected
    assert expected[-1][1] == wire.backend.cache.peek("alice").version
    wire.receive(envelope(rosterGet(ver=expected[0][1])))
    [full] = wire.sent()
    assert innerIQ(full).query["ver"] == expected[-1][1] and len(list(innerIQ(full).query.elements())) == 2
    wire.receive(envelope(rosterGet(ver=expected[-1][1]), stanzaID="env2"))
    [current] = wire.sent()
    assert list(innerIQ(current).elements()) == []


def test_usersOfOtherDomainsRefused() -> None:
    """
    A forwarded query from a user of another domain is forbidden.
    """
    wire = connected()
    wire.receive(envelope(rosterGet(sender="eve@evil.example/x")))
    [reply] = wire.sent()
    assert innerIQ(reply).error.firstChildElement().name == "forbidden"
    assert wire.webApp.requests == {}


def test_malformedEnvelopeRefused() -> None:
    """
    An envelope without a forwarded iq gets bad-request, never silence.
    """
    wire = connected()
    wire.receive(
        f"<iq type='set' from='{DOMAIN}' to='{COMPONENT}' id='e'>"
        "<delegation xmlns='urn:xmpp:delegation:2'/></iq>"
    )
    [reply] = wire.sent()
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "bad-request"


def test_fetchFailureAnswersWait() -> None:
    """
    When the web app fails for an uncached user, the client gets
    internal-server-error of type wait, and nothing is cached.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (500, b"oops")
    wire = connected(webApp)
    wire.receive(envelope(rosterGet()))
    storedRead, reply = wire.sent()
    assert storedRead["to"] == "alice@example.org"  # asked for while fetching
    inner = innerIQ(reply)
    assert inner.error["type"] == "wait"
    assert inner.error.firstChildElement().name == "internal-server-error"
    assert "alice" not in wire.backend.cache


def test_directQueryToComponent() -> None:
    """
    Without delegation, a roster get addressed to the component's JID is
    answered with the sender's roster.
    """
    wire = connected(burst="")
    wire.receive(f"<iq type='get' from='alice@example.org/res' to='{COMPONENT}' id='q1'>"
                 f"<query xmlns='{NS_ROSTER}'/></iq>")
    [reply] = wire.sent()
    assert (reply["type"], reply["to"], reply["from"], reply["id"]) == (
        "result", "alice@example.org/res", COMPONENT, "q1")
    assert len(list(reply.query.elements())) == 2


def test_directQueryFromOtherDomainRefused() -> None:
    """
    A direct query from another domain's user is forbidden.
    """
    wire = connected(burst="")
    wire.receive(f"<iq type='get' from='eve@evil.example/x' to='{COMPONENT}' id='q1'>"
                 f"<query xmlns='{NS_ROSTER}'/></iq>")
    [reply] = wire.sent()
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "forbidden"


def test_presenceWarmsCacheAndTracksResources() -> None:
    """
    A user's first available presence fetches the roster; resources are
    tracked until unavailable.
    """
    wire = connected()
    wire.receive("<presence from='alice@example.org/phone' to='roster.example.org'/>")
    wire.receive("<presence from='alice@example.org/laptop' to='roster.example.org'/>")
    wire.answerRequests(serverAnswers())
    assert wire.webApp.requests["alice"] == 1
    assert "alice" in wire.backend.cache
    assert wire.component.privileges.online["alice"] == {"alice@example.org/phone", "alice@example.org/laptop"}
    wire.receive("<presence type='unavailable' from='alice@example.org/phone'/>")
    wire.receive("<presence type='unavailable' from='alice@example.org/laptop'/>")
    assert "alice" not in wire.component.privileges.online


def test_forgedPrivilegeAdvertisementIgnored() -> None:
    """
    A privilege message from anyone but the domain grants nothing.
    """
    wire = connected(burst="")
    wire.receive(PERMISSIONS_2.replace(f"from='{DOMAIN}'", "from='mallory@example.org/x'"))
    assert not wire.component.privileges.canSync()


def test_discoPingAndUnknown() -> None:
    """
    disco#info lists identity and features, ping is answered, and unknown
    requests get service-unavailable.
    """
    wire = connected(burst="")
    wire.receive(f"<iq type='get' from='alice@example.org/r' to='{COMPONENT}' id='i'>"
                 "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
                 f"<iq type='get' from='alice@example.org/r' to='{COMPONENT}' id='p'>"
                 "<ping xmlns='urn:xmpp:ping'/></iq>"
                 f"<iq type='get' from='alice@example.org/r' to='{COMPONENT}' id='u'>"
                 "<time xmlns='urn:xmpp:time'/></iq>")
    info, ping, unknown = wire.sent()
    features = {f["var"] for f in info.query.elements() if f.name == "feature"}
    assert {"urn:xmpp:ping", NS_ROSTER} <= features
    assert info.query.identity["category"] == "component"
    assert (ping["type"], ping["id"]) == ("result", "p")
    assert unknown["type"] == "error" and unknown.error.firstChildElement().name == "service-unavailable"


def test_streamErrorReported() -> None:
    """
    A stream error (wrong secret) is kept as the last error for health.
    """
    wire = ComponentOnWire()
    wire.receive(STREAM_HEADER)
    wire.receive("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    assert wire.component.status.lastError == "stream error: not-authorized"
    assert not wire.component.status.connected


def test_keepaliveSent() -> None:
    """
    Whitespace keepalives go out every keepalive interval while connected.
    """
    wire = connected(burst="")
    wire.transport.clear()
    wire.clock.advance(wire.config.keepalive_interval)
    assert wire.transport.value() == b" "


def test_loginDuringBulkRefreshGoesFirst() -> None:
    """
    A refresh of more users than privileged requests may be in flight
    queues the rest, leaving the slots reserved for clients free; a user
    of that queue who logs in meanwhile has its read sent at once, in a
    reserved slot, and its write before the queued users'.
    """
    users = [f"u{i}" for i in range(MAX_SYNC_IN_FLIGHT + 8)]
    late = users[-1]
    background = MAX_SYNC_IN_FLIGHT - RESERVED_FOR_CLIENTS
    wire = connected(WebApp({u: {"bob@example.org": {}} for u in users}))
    refresh = wire.backend.refresh(users)
    inFlight = wire.sent()
    assert [s["to"] for s in inFlight] == [f"{u}@example.org" for u in users[:background]]
    wire.receive(envelope(rosterGet(sender=f"{late}@example.org/res")))
    [lateRead] = wire.sent()
    assert (lateRead["type"], lateRead["to"]) == ("get", f"{late}@example.org")
    answer = serverAnswers()
    wire.receive(answer(lateRead))
    for stanza in inFlight:
        wire.receive(answer(stanza))
    after = [(s["type"], s["to"].split("@")[0]) for s in wire.answerRequests(answer)]
    # The late user's write waits only for requests already in flight,
    # never for the queued users' work.
    queued = [("get", u) for u in users[background:-1]] + [("set", u) for u in users[background:-1]]
    assert after.index(("set", late)) < min(after.index(q) for q in queued if q[0] == "set")
    assert sorted(after) == sorted(queued + [("set", u) for u in users[:background]]
                                   + [("set", late), ("result", DOMAIN)])
    assert refresh.called and refresh.result.updated == len(users)


def test_userUnknownToTheWebAppToldSo() -> None:
    """
    The web app answers 404 for a user: the client gets item-not-found
    saying the web app does not know the account, and nothing is cached.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (404, b"no such user")
    wire = connected(webApp)
    with capturedLogs():
        wire.receive(envelope(rosterGet()))
        [reply] = [s for s in wire.answerRequests(serverAnswers()) if s.getAttribute("to") == DOMAIN]
    inner = innerIQ(reply)
    assert inner["type"] == "error" and inner.error.firstChildElement().name == "item-not-found"
    assert "does not know your account" in str(inner.error.text)
    assert "alice" not in wire.backend.cache


def test_pushesShareTheBoundOfPrivilegedRequests() -> None:
    """
    A roster push is a privileged request like the others: while the
    bound of privileged requests in flight is taken, it waits for a slot,
    and is sent once one frees up.
    """
    wire = connected()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(serverAnswers())
    slots = wire.component.privileges._sync
    held: list[Deferred[None]] = []

    def neverAnswered() -> Deferred[None]:
        held.append(Deferred())
        return held[-1]

    for n in range(MAX_SYNC_IN_FLIGHT - RESERVED_FOR_CLIENTS):  # every slot background work may hold
        slots.run(f"other{n}", False, neverAnswered)
    before = wire.backend.cache.peek("alice")
    after = Roster([*before.contacts, Contact("dave@example.org", None, ())])
    assert wire.component.privileges.push("alice", before, after) == 1
    assert wire.sent() == [] and slots.waiting == 1
    held[0].callback(None)
    [push] = wire.sent()
    assert push.firstChildElement().name == "privileged_iq"
