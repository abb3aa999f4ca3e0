"""gRPC methods of service cycles (part of the Interactions servicer):
defining a cycle's versions and reading them."""

from __future__ import annotations

import asyncpg

from services.interactions import commands


class CycleApi:
    """DefineServiceCycle, GetServiceCycle, ListServiceCycles and
    ListServiceCycleVersions; mixed into the servicer of :mod:`api`."""

    _pool: asyncpg.Pool
    _ctx: commands.Context
