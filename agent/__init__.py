"""soundscape-agent: unattended acoustic monitoring on a Raspberry Pi with an AudioMoth.

Stages, one module each: :mod:`agent.capture` -> :mod:`agent.windows` -> :mod:`agent.analysis`
-> :mod:`agent.store` -> :mod:`agent.sync`, wired together in :mod:`agent.pipeline`.
Importing the package has no side effects.
"""

__version__ = "0.1.0"
