"""`python -m cli` runs the `tabserve` command."""

from cli.main import main

main()
