"""The fleet view: ``machinery dashboard --nats URL``.

A small server that follows every agent's events on NATS (``choria.machine.>``), keeps an
in-memory model of each node's machines (:mod:`machinery.fleet.model`) and serves the dashboard
in fleet mode with a JSON and server-sent-events API (:mod:`machinery.fleet.server`).
"""

from machinery.fleet.model import FleetModel
from machinery.fleet.server import FleetDashboard, create_fleet_app

__all__ = ["FleetDashboard", "FleetModel", "create_fleet_app"]
