# -*- test-case-name: tests.test_api -*-
"""
Prometheus metrics (C{GET /metrics}).

The counters already kept by the parts (cache hits, queries answered, fetch
failures, kick outcomes) are read when scraped, by a collector, as one
L{rosteradmin.snapshot.ServiceSnapshot}, so the hot paths pay nothing for
metrics.  Only fetch latency, a histogram, is observed
as it happens.  Each service has its own registry, so several services in one
process (the tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web import server

from rosteradmin import __version__
from rosteradmin.cache import USER_CHARGE
from rosteradmin.snapshot import EventsSnapshot, ServiceSnapshot
from rosteradmin.web import JsonLeaf


class FetchLatency:
    """
    Seconds per roster fetch, by outcome: the one metric observed as it
    happens.  It exists before the fetcher, which is given L{observe} at
    construction, and before the L{Metrics} that serve it.

    @ivar histogram: The C{rosteradmin_fetch_seconds} histogram, in no
        registry until a L{Metrics} registers it in its own.
    """

    def __init__(self) -> None:
        self.histogram = Histogram(
            "rosteradmin_fetch_seconds", "Roster fetches from the web app, by outcome",
            ["outcome"], registry=None,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def observe(self, outcome: str, seconds: float) -> None:
        """
        One fetch ended.

        @param outcome: C{"ok"} or C{"failed"}.
        """
        self.histogram.labels(outcome).observe(seconds)


def roleMetrics(role: str, since: float) -> Iterator[Metric]:
    """
    Whether this process leads, and since when (a standby shows them too).
    """
    yield GaugeMetricFamily("rosteradmin_leader", "1 while this process leads (holds the component connection), "
                            "0 on a standby", 1 if role == "leader" else 0)
    yield GaugeMetricFamily("rosteradmin_role_since_seconds", "When this process became leader or standby "
                            "(UNIX time)", since)


class Metrics(Collector):
    """
    The registry of one service, and the collector of its live counters:
    each scrape reads one L{ServiceSnapshot}.
    """

    def __init__(self, snapshots: Callable[[], ServiceSnapshot], fetchLatency: FetchLatency) -> None:
        """
        @param snapshots: Takes the figures to show (L{rosteradmin.snapshot.Snapshots}).
        """
        self.snapshots = snapshots
        self.registry = CollectorRegistry()
        self.registry.register(fetchLatency.histogram)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshots()
        backend, stream = snapshot.backend, snapshot.stream
        yield InfoMetricFamily("rosteradmin_build", "The release running", value={"version": __version__})
        yield from roleMetrics(snapshot.role, snapshot.roleSince)
        yield CounterMetricFamily("rosteradmin_roster_queries", "Roster queries answered", stream.queriesAnswered)
        yield CounterMetricFamily("rosteradmin_cache_hits", "Roster cache hits", backend.cacheHits)
        yield CounterMetricFamily("rosteradmin_cache_misses", "Roster cache misses", backend.cacheMisses)
        yield GaugeMetricFamily("rosteradmin_cached_users", "Users whose roster is cached", backend.cachedUsers)
        yield GaugeMetricFamily("rosteradmin_cached_contacts", "Contacts of all cached rosters", backend.cachedContacts)
        yield GaugeMetricFamily("rosteradmin_cache_charge",
                                f"What the cached rosters count against --cache-max-contacts: their contacts, "
                                f"plus {USER_CHARGE} per cached user", backend.cacheCharge)
        yield CounterMetricFamily("rosteradmin_cache_evictions",
                                  "Rosters of offline users dropped to stay within --cache-max-contacts",
                                  backend.cacheEvictions)
        yield GaugeMetricFamily("rosteradmin_fetches_in_flight", "Roster fetches running", backend.fetchesInFlight)
        yield CounterMetricFamily("rosteradmin_fetch_failures", "Failed roster fetches", backend.fetchFailures)
        yield CounterMetricFamily("rosteradmin_refreshes", "Refresh requests handled", backend.refreshes)
        yield GaugeMetricFamily("rosteradmin_unsynced_users", "Users whose server roster awaits a write",
                                backend.unsyncedUsers)
        yield GaugeMetricFamily("rosteradmin_refused_users",
                                "Users whose web-app roster is over the server's stanza limit",
                                len(backend.refused))
        yield _labelled(CounterMetricFamily("rosteradmin_stanzas_refused",
                                            "Stanzas not sent because they were over the server's stanza limit",
                                            labels=["what"]), backend.stanzasRefused)
        yield CounterMetricFamily("rosteradmin_queries_refused",
                                  "Roster queries refused because their user sent too many at once",
                                  stream.queriesRefused)
        yield GaugeMetricFamily("rosteradmin_parked_users",
                                "Users whose roster writes are held back after coinciding with stream losses",
                                len(backend.parked))
        yield CounterMetricFamily("rosteradmin_versions_promised",
                                  "Roster versions given to the server, which answers queries with them itself "
                                  "(contrib's mod_rosteradmin_roster): those queries are not counted here",
                                  backend.promised)
        yield GaugeMetricFamily("rosteradmin_stuck", "1 while fetches or privileged requests make no progress",
                                0 if backend.stuck is None else 1)
        yield _labelled(CounterMetricFamily("rosteradmin_drift_repaired",
                                            "Server roster items repaired because they differed from what "
                                            "rosteradmin wrote", labels=["cause"]), backend.driftRepaired)
        yield GaugeMetricFamily("rosteradmin_pending_users",
                                "Users whose server roster may be behind the web app (kept across restarts)",
                                backend.pendingUsers)
        yield GaugeMetricFamily("rosteradmin_state_unsaved",
                                "Changes of the state kept in memory because the --state storage does not take "
                                "writes (a file locked, full or read-only; a database down or refusing); "
                                "0 while writes succeed", backend.stateUnsaved)
        sync = snapshot.sync
        syncUsers = GaugeMetricFamily("rosteradmin_sync_users", "Users of the current or last full sync, by state",
                                      labels=["state"])
        for state, count in (("listed", sync.listed if sync else 0), ("synced", sync.synced if sync else 0),
                             ("failed", sync.failed if sync else 0)):
            syncUsers.add_metric([state], count)
        yield syncUsers
        yield GaugeMetricFamily("rosteradmin_sync_running", "1 while a full sync or reconciliation runs",
                                1 if sync is not None and sync.running else 0)
        yield _labelled(CounterMetricFamily("rosteradmin_kicks", "Kick requests by HTTP status", labels=["status"]),
                        snapshot.kicks)
        yield CounterMetricFamily("rosteradmin_online_checked",
                                  "Server rosters of online users read back by the online check",
                                  snapshot.onlineChecked)
        yield from _eventFamilies(snapshot.events)
        yield GaugeMetricFamily("rosteradmin_connected", "1 while connected to the XMPP server",
                                1 if stream.connected else 0)
        yield GaugeMetricFamily("rosteradmin_online_resources", "Clients known online (from presence)",
                                stream.onlineResources)
        yield GaugeMetricFamily("rosteradmin_interested_resources",
                                "Clients pushed roster changes (they sent presence or asked for their roster)",
                                stream.interestedResources)
        yield CounterMetricFamily("rosteradmin_roster_pushes", "Roster pushes sent to clients", stream.rosterPushes)
        yield CounterMetricFamily("rosteradmin_devices_given_up",
                                  "Clients given up with roster pushes unanswered (answered in full next time)",
                                  stream.devicesGivenUp)


def _eventFamilies(events: EventsSnapshot | None) -> Iterator[Metric]:
    """
    The outbox of events for the web app, when C{--events-url} is set.
    """
    if events is None:
        return
    yield GaugeMetricFamily("rosteradmin_events_queued", "Events waiting for the web app to accept them",
                            events.queued)
    yield GaugeMetricFamily("rosteradmin_events_oldest_age_seconds",
                            "Seconds the oldest event waiting for the web app has waited (0: none waits)",
                            events.oldestAge or 0.0)
    yield CounterMetricFamily("rosteradmin_events_delivered", "Events the web app accepted", events.delivered)
    yield CounterMetricFamily("rosteradmin_events_dropped",
                              "Events not kept: the outbox was full (--events-max-queued) or the state refused them",
                              events.dropped)


def _labelled(family: CounterMetricFamily, counts: Mapping[str, int]) -> Metric:
    """
    A counter of one label: a sample per label value, in their order.
    """
    for label, count in sorted(counts.items()):
        family.add_metric([label], count)
    return family


class MetricsResource(JsonLeaf):
    """
    C{GET /metrics} in the Prometheus text format.

    prometheus_client's own Twisted resource renders in a thread pool; the
    scrape is cheap and reads reactor-owned state, so it renders here, in
    the reactor thread.
    """

    allowedMethods = (b"GET", b"HEAD")

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.metrics.registry)
