"""Assignments: shell variables and a command's environment, filtered as SSH `env` requests are."""
from __future__ import annotations

from hoopy.ssh.environment import passes as env_passes
from hoopy.ssh.judge.parts import _clip, Part
from hoopy.ssh.judge.walk import Walk
from hoopy.ssh.judge.words import is_literal, Word


# Lowercase variables programs read from the environment: assignments to them are filtered too.
_ENV_LOWER = frozenset({"http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"})


class Assignments(Walk):
    def assignment(self, node, prefix: bool):
        name_node = node.child_by_field_name("name")
        value_node = node.child_by_field_name("value")
        if name_node is None or name_node.type != "variable_name":
            self.unjudgeable(f"the assignment {_clip(self.t(node))!r}")
            return
        name = self.t(name_node)
        if value_node is None:
            value = Word("", "''", "")
        elif value_node.type == "array":
            self.bash_only("an array")
            self.unjudgeable(f"the array assignment {_clip(self.t(node))!r}")
            return
        else:
            value = self.word(value_node, assignment=True)
        if prefix:
            self.environment(name, value, self.t(node))
        else:
            self.shell_variable(name, value, self.t(node))

    def environment(self, name, value: Word, text=None):
        """NAME=VALUE for a command's environment: the same filter as SSH `env` requests."""
        if not is_literal(value):
            self.add(Part("refused", f"{_clip(text or name)!r}: an environment value the shell would expand"))
        elif not env_passes(name, value.value):
            self.add(Part("refused", f"{name}={_clip(value.value)!r}: only LANG, LC_*, TZ and HOOPY_* "
                                     f"variables with plain values may be set for the upstream"))

    def unset(self, name: str):
        """unset NAME: with PATH unset bash looks for programs in the current directory (then
        `ls` is ./ls); an environment name is filtered as an assignment to it would be."""
        if name.islower() and name not in _ENV_LOWER and not name.startswith(("bash", "ld_")):
            return
        if not env_passes(name, ""):
            self.add(Part("refused", f"unset {name}: only LANG, LC_*, TZ and HOOPY_* variables may be changed "
                                     f"for the upstream"))

    def shell_variable(self, name, value: Word | None, text=None):
        """A shell variable assigned (`x=1`, `for x in`): exported names change what programs do."""
        if name.islower() and name not in _ENV_LOWER and not name.startswith(("bash", "ld_")):
            if value is not None and not value.literal:
                pass  # its value is unknown, and so is every later use of it
            return
        self.environment(name, value if value is not None else Word("", "", None), text or name)
