"""`python -m erel_sync` runs the same CLI as the `erel-sync` console script."""

from erel_sync.cli.main import main

main()
