"""``python -m gpucnn``: the same command group as the ``gpucnn`` script."""

from gpucnn.cli import main

if __name__ == "__main__":
    main()
