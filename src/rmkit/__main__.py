"""`python -m rmkit` runs the CLI."""

from rmkit.cli import main

raise SystemExit(main())
