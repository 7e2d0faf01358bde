"""`python -m geoseg`, also the form `accelerate launch -m geoseg train ...` uses."""

from geoseg.cli import main

if __name__ == "__main__":
    main()
