"""`python -m tilefuse` is the `tilefuse` command (see cli.py)."""

from .cli import main

raise SystemExit(main())
