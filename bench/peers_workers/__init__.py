"""Worker bodies and per-tool harness pieces of ``bench/peers.py`` (run inside the peers environment)."""
