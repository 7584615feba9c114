"""The client library applications import: ``AsyncClient`` (asyncio, what bin/chat uses),
the minimal blocking ``Client``, ``MediaClient`` for relays, and ``ClientError``."""
from nodes.client.aclient import AsyncClient
from nodes.client.blocking import Client, ClientError
from nodes.client.media import MediaClient

__all__ = ["AsyncClient", "Client", "ClientError", "MediaClient"]
