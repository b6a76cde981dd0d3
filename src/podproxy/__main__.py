"""`python -m podproxy` is the `podproxy` command."""

from podproxy.cli import main

raise SystemExit(main())
