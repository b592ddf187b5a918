"""
Tests that each implementation provides the interfaces of
L{rosteradmin.interfaces} it declares: every method with a compatible
signature and every attribute, checked on real, wired instances.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface import Interface
from zope.interface.verify import verifyClass, verifyObject

from rosteradmin.backend import RosterBackend
from rosteradmin.cache import RosterCache
from rosteradmin.component import ConnectionMonitor
from rosteradmin.ejabberdapi import EjabberdAPISync
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.interfaces import IConnectionStatus, IRoomKicker, IRosterBackend, IRosterSync
from rosteradmin.muc import RoomKicker
from rosteradmin.privilege import PrivilegeHandler
from tests.helpers import DOMAIN, ComponentOnWire, offlineSync, standalonePrivileges

IMPLEMENTATIONS: list[tuple[type[Interface], type]] = [
    (IRosterBackend, RosterBackend),
    (IRosterSync, PrivilegeHandler),
    (IRosterSync, EjabberdAPISync),
    (IRoomKicker, RoomKicker),
    (IConnectionStatus, ConnectionMonitor),
]


@pytest.mark.parametrize(("interface", "cls"), IMPLEMENTATIONS)
def test_classImplementsInterface(interface: type[Interface], cls: type) -> None:
    """
    Each implementation class declares its interface and has its methods.
    """
    assert interface.implementedBy(cls)
    assert verifyClass(interface, cls)


def test_wiredComponentProvidesInterfaces() -> None:
    """
    The backend, privileges, kicker and status of a component as tap wires
    them provide their interfaces, attributes included, before and after
    the handshake.
    """
    wire = ComponentOnWire()
    parts = [
        (IRosterBackend, wire.backend),
        (IRosterSync, wire.component.privileges),
        (IRoomKicker, wire.component.kicker),
        (IConnectionStatus, wire.component.status),
    ]
    for interface, provider in parts:
        assert verifyObject(interface, provider)
    wire.handshake()
    for interface, provider in parts:
        assert verifyObject(interface, provider)
    assert wire.backend.sync is wire.component.privileges


def test_unwiredBackendProvidesIRosterBackend() -> None:
    """
    A backend built on its own, with the L{IRosterSync} it was given, is
    still an L{IRosterBackend}.
    """
    fetcher = RosterFetcher("http://webapp.invalid/rosters/%s", DOMAIN, Clock(), http=None)
    sync = offlineSync()
    backend = RosterBackend(RosterCache(), fetcher, sync)
    assert backend.sync is sync
    assert verifyObject(IRosterBackend, backend)


def test_standaloneHandlersProvideInterfaces() -> None:
    """
    The XMPP handlers provide their interfaces as constructed, before they
    join a stream.
    """
    status = ConnectionMonitor(Clock(), 30.0)
    assert verifyObject(IConnectionStatus, status)
    assert verifyObject(IRosterSync, standalonePrivileges(status))
    assert verifyObject(IRosterSync, EjabberdAPISync("http://127.0.0.1:5281/api", DOMAIN, Clock()))
    assert verifyObject(IRoomKicker, RoomKicker(f"rosteradmin.{DOMAIN}", status, Clock(), 5.0, "rosteradmin"))
