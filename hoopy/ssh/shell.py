"""The command-line judgement the gateway calls: what a command line will run, judged part by part
(sans-IO). It lives in hoopy.ssh.judge, one module a job; these are the names callers use."""
from __future__ import annotations

from hoopy.ssh.judge.bounds import MAX_NESTING
from hoopy.ssh.judge.encoding import G_QMARK, G_STAR, INPUT, SEP
from hoopy.ssh.judge.judge import analyze
from hoopy.ssh.judge.parse import dialect_of
from hoopy.ssh.judge.parts import Analysis, Part, Unjudgeable
from hoopy.ssh.judge.terminal import NO_TERMINAL_ESCAPE, terminal_unit

__all__ = ["G_QMARK", "G_STAR", "INPUT", "MAX_NESTING", "NO_TERMINAL_ESCAPE", "SEP", "Analysis", "Part",
           "Unjudgeable", "analyze", "dialect_of", "terminal_unit"]
