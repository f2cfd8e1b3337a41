"""`erel-sync web`: the read-only live page (server.py, index.html)."""
