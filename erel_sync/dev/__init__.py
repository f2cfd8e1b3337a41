"""`erel-sync dev`: a whole local cluster (broker, publisher, agents) for demos and e2e tests."""
