"""What a command line will run, judged part by part (sans-IO).

sshd runs an exec request as ``$SHELL -c LINE``: the line is a shell program, and what it runs is
what the shell makes of it. So the line is parsed as the shell will (tree-sitter-bash, never by
hand), and every simple command it contains becomes a *part* the rules judge on its own, after
quote removal; redirections are parts too (``write PATH``, ``read PATH``). What the shell would
decide only while running (command substitution, ``eval``, a variable in the command name, a
function, an alias) cannot be judged beforehand: such a part is *unjudgeable* (refused, or held
where the grant says ``unjudgeable = "approve"``).

Wrappers are seen through: ``sh -c STRING`` (the string parsed again, to a depth limit),
``timeout``, ``env``, ``nice``, ``nohup``, ``stdbuf``, ``time``, ``command``, ``exec``, ``xargs``
and ``cd DIR &&``; their own options are checked, and an option a wrapper list does not know makes
the part unjudgeable. A wrapper never widens what runs: only the command inside is judged.

The words of an exec part are encoded for the rules as one string (hoopy.ssh.judge.encoding).

One module a job: parse (the tree-sitter parse, bounded in time, and its nesting), misread (where
the parser reads a line otherwise than the shell), bounds, words (quote removal and expansions),
statements, commands, assignments, wrappers (and their option grammars), redirections, cwd (the
working directory the walk follows), programs (the reviewed builtin lists), terminal (programs
without terminal escapes), dotdots (`..` segments for the rules), parts (what the judgement hands
back), walk (the state of one line's judgement) and judge (the entry point, ``analyze``).
hoopy.ssh.shell is what the rest of the gateway calls.
"""
