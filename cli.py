"""Entry point: `uv run cli.py --help`."""

from ruvon_cli.app import main

if __name__ == "__main__":
    main()
