"""pathunlearn: how the order of finetuning stages changes what local unlearning does.

Everything the command line does is callable from Python; see the README for a tour.
"""

__version__ = "0.1.0"
