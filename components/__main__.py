"""Entry point of the lockstep component package (components/PulumiPlugin.yaml).

The Python language host runs `python <this directory> <engine address> …`; the repository root's
__main__.py is the stack program, which is why the plugin lives here and not at the root.
"""

from components.plugin import main

if __name__ == "__main__":
    main()
