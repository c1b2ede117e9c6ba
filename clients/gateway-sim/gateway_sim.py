#!/usr/bin/env python3
"""Moved to the clients/python package (module hub_clients.gateway_sim, command `hub-gateway-sim` after
`pip install ./clients/python`); this path keeps old commands working."""
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python" / "src"))
runpy.run_module("hub_clients.gateway_sim", run_name="__main__", alter_sys=True)
