"""What routes get from the app (FastAPI dependencies): the node, its GPU worker, its PoC side.

The app builds the three at start-up (:func:`ditproof.server.app.create_app`) and keeps them on
``app.state``; a route names the ones it uses.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ditproof.server.node import Node
from ditproof.server.poc import PocService
from ditproof.server.worker import GpuWorker


def node_of(request: Request) -> Node:
    """The node's state owner."""
    node: Node = request.app.state.node
    return node


def worker_of(request: Request) -> GpuWorker:
    """The GPU worker (its job store, artifacts and configuration)."""
    worker: GpuWorker = request.app.state.worker
    return worker


def poc_of(request: Request) -> PocService:
    """The PoC side."""
    poc: PocService = request.app.state.poc
    return poc


NodeDep = Annotated[Node, Depends(node_of)]
WorkerDep = Annotated[GpuWorker, Depends(worker_of)]
PocDep = Annotated[PocService, Depends(poc_of)]
