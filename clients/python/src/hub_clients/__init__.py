"""Python helpers and reference workers for the hub (see clients/python/README.md).

Each worker module runs on its own (`python -m hub_clients.gateway_sim`, or the console
script `hub-gateway-sim` once installed); `hub_clients.helpers` has what a backend or a test
needs to talk to a hub: connection tokens and the server API.
"""

from .helpers import HubAPI, HubAPIError, connection_token

__all__ = ["HubAPI", "HubAPIError", "connection_token"]
