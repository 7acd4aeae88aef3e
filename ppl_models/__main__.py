import sys

from .cli import main

# Guarded so that importing the module (Sphinx's autosummary imports every submodule it finds)
# does not run the command line with the importer's arguments.
if __name__ == "__main__":
    sys.exit(main())
