"""``python -m softcontrast train NAME`` (and ``accelerate launch -m softcontrast train NAME``)."""

from softcontrast.cli import main

if __name__ == "__main__":
    main()
