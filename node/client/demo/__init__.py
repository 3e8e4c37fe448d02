"""`onebyte demo`: a real swarm of daemons on this machine, end to end, in minutes
(run.py: the steps; swarm.py: the daemons; eval.py: the evaluations; plot.py: the PNG).

matplotlib, for the plot, is the `demo` extra: `pip install 'onebyte[demo]'`.
"""

from .run import add_parser, cmd_demo

__all__ = ["add_parser", "cmd_demo"]
