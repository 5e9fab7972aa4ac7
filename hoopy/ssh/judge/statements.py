"""Statements: lists, pipelines, compound commands, tests and arithmetic, walked in the order the
shell runs them."""
from __future__ import annotations

import re

from hoopy.ssh.judge.cwd import _merge, _UNJUDGED, BOTTOM
from hoopy.ssh.judge.parse import _walk
from hoopy.ssh.judge.parts import _clip, Unjudgeable
from hoopy.ssh.judge.programs import _NAME_TESTS, _UNJUDGEABLE_BUILTINS
from hoopy.ssh.judge.redirections import _Redirects
from hoopy.ssh.judge.walk import Walk
from hoopy.ssh.judge.words import Word


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Arithmetic that runs nothing: numbers (decimal, 0x.., BASE#..) and operators, no names.
_ARITH_NODES = frozenset({"number", "binary_expression", "unary_expression", "ternary_expression",
                          "parenthesized_expression"})
_ARITH_NUMBER = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]+|[0-9]+#[0-9A-Za-z@_]+")
_ARITH_ASSIGN = frozenset({"=", "+=", "-=", "*=", "/=", "%=", "<<=", ">>=", "&=", "^=", "|=", "++", "--"})
_ARITH_TESTS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})  # [[ ]] evaluates their operands

_INTEGER = re.compile(r"[-+]?[0-9]+")


class Statements(Walk):
    """Each statement returns (cwd if it succeeded, cwd if it failed)."""

    def sequence(self, children, cwd):
        ok = fail = cwd
        last = None
        before = cwd
        for ch in children:
            if ch.type == "&":
                # The statement before runs in the background, in a subshell: its cd stays there.
                ok = fail = before
                continue
            if not ch.is_named or ch.type == "comment":
                continue
            if last is not None:
                cwd = _merge(ok, fail)
            before = cwd
            ok, fail = self.statement(ch, cwd)
            last = ch
        return ok, fail

    def statement(self, node, cwd, redirs=()):
        """``redirs``: redirections written after this statement. tree-sitter hangs `a && b > f`
        and `a | b > f` on the whole list; the shell gives them to the last command (`b`),
        after `a` ran (and after its cd): so they are passed down to the rightmost command."""
        k = node.type
        if k == "command":
            return self.command(node, cwd, redirs)
        if k == "redirected_statement":
            return self.redirected(node, cwd, redirs)
        if k == "list":
            return self.list(node, cwd, redirs)
        if k == "pipeline":
            stages = [c for c in node.children if c.is_named and c.type != "comment"]
            for ch in node.children:
                if ch.type == "|&":
                    self.bash_only("|&")
            for i, ch in enumerate(stages):
                self.statement(ch, cwd, redirs if i == len(stages) - 1 else ())
            return cwd, cwd
        if k == "negated_command":
            inner = [c for c in node.children if c.is_named and c.type != "comment"]
            if len(inner) != 1:
                raise Unjudgeable(f"{_clip(self.t(node))!r}")
            ok, fail = self.statement(inner[0], cwd, redirs)
            return fail, ok
        if redirs:
            # A compound command's redirections are opened before it runs, where it starts.
            info = _Redirects()
            for r in redirs:
                self.redirect(r, cwd, info)
        if k == "subshell":
            self.sequence(node.children, cwd)
            return cwd, cwd
        if k == "compound_statement":
            if node.children and node.children[0].type == "((":
                self.bash_only("((...))")
                self.arithmetic(node, "arithmetic command")
                return cwd, cwd
            return self.sequence(node.children, cwd)
        if k == "if_statement":
            return self.if_statement(node, cwd)
        if k == "while_statement":
            return self.loop(node, cwd)
        if k == "for_statement":
            return self.for_statement(node, cwd)
        if k == "case_statement":
            return self.case_statement(node, cwd)
        if k == "variable_assignment":
            self.assignment(node, prefix=False)
            return cwd, cwd
        if k == "variable_assignments":
            for ch in node.named_children:
                self.assignment(ch, prefix=False)
            return cwd, cwd
        if k == "declaration_command":
            self.declaration(node)
            return cwd, cwd
        if k == "unset_command":
            for ch in node.named_children:
                w = Word(self.t(ch), self.t(ch), self.t(ch)) if ch.type == "variable_name" else self.word(ch)
                if w.literal and _NAME.fullmatch(w.value):
                    self.unset(w.value)
                    continue
                if w.literal and w.value in ("-v", "-f", "-n"):
                    continue
                if not w.literal or "[" in w.value:
                    # bash evaluates the subscript of an array element to unset (`PIPESTATUS[$(cmd)]`).
                    self.unjudgeable(f"{_clip(self.t(node))!r}: unset of a name the gateway cannot read "
                                     f"(a subscript is evaluated)")
                    break
            return cwd, cwd
        if k == "test_command":
            if node.children and node.children[0].type == "[[":
                self.bash_only("[[ ... ]]")
            self.test_command(node)
            return cwd, cwd
        if k == "function_definition":
            self.unjudgeable(f"a function definition ({_clip(self.t(node))!r}): what it runs is decided later")
            return _UNJUDGED, _UNJUDGED
        if k == "c_style_for_statement":
            self.unjudgeable(f"an arithmetic for loop ({_clip(self.t(node))!r})")
            return None, None
        raise Unjudgeable(f"{_clip(self.t(node))!r} ({k.replace('_', ' ')})")

    def list(self, node, cwd, redirs=()):
        # `a && b || c ...` is a chain of lists nested on the left, one per operator: followed in
        # a loop, so a long chain is no deeper to walk than one list.
        chain = []
        while node.type == "list":
            named = [c for c in node.children if c.is_named and c.type != "comment"]
            ops = [c.type for c in node.children if c.type in ("&&", "||")]
            if len(named) != 2 or len(ops) != 1:
                raise Unjudgeable(f"the list {_clip(self.t(node))!r}")
            chain.append((ops[0], named[1]))
            node = named[0]
        ok, fail = self.statement(node, cwd)
        for i, (op, right) in enumerate(reversed(chain)):
            last = redirs if i == len(chain) - 1 else ()  # the rightmost command's redirections
            if op == "&&":
                rok, rfail = self.statement(right, ok if ok is not BOTTOM else cwd, last)
                ok, fail = rok, _merge(fail, rfail)
            else:
                rok, rfail = self.statement(right, fail if fail is not BOTTOM else cwd, last)
                ok, fail = _merge(ok, rok), rfail
        return ok, fail

    def if_statement(self, node, cwd):
        # if C; then B; [elif C; then B;]... [else B;] fi
        results = []
        cond, body, mode = [], [], "cond"
        branch_cwd = cwd

        def flush_branch(c_nodes, b_nodes, start):
            ok, fail = self.sequence(c_nodes, start)
            bok, bfail = self.sequence(b_nodes, ok) if b_nodes else (ok, ok)
            results.append(_merge(bok, bfail))
            return fail

        for ch in node.children:
            t = ch.type
            if t in ("if", "fi", ";", "\n"):
                continue
            if t == "then":
                mode = "body"
                continue
            if t == "elif_clause":
                branch_cwd = flush_branch(cond, body, branch_cwd)
                cond, body = [], []
                self.clause(ch, branch_cwd, results, elif_=True)
                continue
            if t == "else_clause":
                if cond:
                    branch_cwd = flush_branch(cond, body, branch_cwd)
                    cond, body = [], []
                ok, fail = self.sequence(ch.children, branch_cwd)
                results.append(_merge(ok, fail))
                branch_cwd = BOTTOM
                continue
            (cond if mode == "cond" else body).append(ch)
        if cond:
            branch_cwd = flush_branch(cond, body, branch_cwd)
        results.append(branch_cwd)
        out = BOTTOM
        for r in results:
            out = _merge(out, r)
        return out, out

    def clause(self, node, cwd, results, elif_):
        cond, body, mode = [], [], "cond"
        for ch in node.children:
            if ch.type in ("elif", ";"):
                continue
            if ch.type == "then":
                mode = "body"
                continue
            (cond if mode == "cond" else body).append(ch)
        ok, fail = self.sequence(cond, cwd)
        bok, bfail = self.sequence(body, ok)
        results.append(_merge(bok, bfail))

    def loop(self, node, cwd):
        cond = [c for c in node.children if c.is_named and c.type not in ("do_group", "comment")]
        body = [c for c in node.children if c.type == "do_group"]
        ok, fail = self.sequence(cond, cwd)
        bok, bfail = self.sequence(body[0].children, ok) if body else (ok, ok)
        if _merge(bok, bfail) != cwd:
            # The body moves: a second round starts elsewhere. Judge it again from nowhere known.
            self.sequence(cond, None)
            if body:
                self.sequence(body[0].children, None)
            return None, None
        return _merge(ok, bok), _merge(fail, bfail)

    def for_statement(self, node, cwd):
        var = next((c for c in node.children if c.type == "variable_name"), None)
        if var is not None:
            self.shell_variable(self.t(var), None)
        for ch in node.children:
            if ch.is_named and ch.type not in ("variable_name", "do_group", "comment"):
                self.word(ch)
        body = next((c for c in node.children if c.type == "do_group"), None)
        if body is None:
            return cwd, cwd
        ok, fail = self.sequence(body.children, cwd)
        if _merge(ok, fail) != cwd:
            self.sequence(body.children, None)
            return None, None
        return cwd, cwd

    def case_statement(self, node, cwd):
        out = cwd
        for ch in node.children:
            if ch.type == "case_item":
                body = []
                seen_paren = False
                for c in ch.children:
                    if c.type == ")":
                        seen_paren = True
                        continue
                    if not seen_paren:
                        if c.is_named:
                            self.word(c)  # patterns: only for what they would substitute
                        continue
                    body.append(c)
                ok, fail = self.sequence(body, cwd)
                out = _merge(out, _merge(ok, fail))
            elif ch.is_named and ch.type != "comment":
                self.word(ch)
        return out, out

    def arithmetic(self, node, what):
        """Arithmetic runs nothing when it is numbers and operators only. Anything else is not
        judged: a variable's value is evaluated again, and a name with a subscript (`a[$(cmd)]`,
        quoted or not) runs the command in it; assignments have side effects."""
        for n in _walk(node):
            if n is node:
                continue
            if n.is_named:
                # (tree-sitter reads 0x1f as a variable name: it is a number, no name starts with a digit)
                ok = (n.type in _ARITH_NODES and (n.type != "number" or _ARITH_NUMBER.fullmatch(self.t(n)))) or (
                    n.type == "variable_name" and _ARITH_NUMBER.fullmatch(self.t(n)) and self.t(n)[0].isdigit())
            else:
                ok = n.type not in _ARITH_ASSIGN
            if not ok:
                self.unjudgeable(f"{what} with variables, strings or side effects ({_clip(self.t(node))!r})")
                return

    def test_command(self, node):
        for n in _walk(node):
            if n.type in ("simple_expansion", "expansion", "command_substitution", "process_substitution",
                          "arithmetic_expansion"):
                self.unjudgeable(f"a test with expansions ({_clip(self.t(node))!r})")
                return
        # `[[ X -eq Y ]]` evaluates X and Y as arithmetic and `[[ -v X ]]` a subscript of X:
        # bash runs `a[$(cmd)]` there even from a quoted string. Operands are numbers, names plain.
        for n in _walk(node):
            op = self.t(n) if n.type in ("test_operator", "word") else None
            if op in _ARITH_TESTS:
                parent = n.parent
                operands = [c for c in parent.children if c.id != n.id] if parent is not None else []
                if parent is None or parent.type != "binary_expression" or len(operands) != 2 or not all(
                        _INTEGER.fullmatch(self.word(c).value or "x") for c in operands):
                    self.unjudgeable(f"a test that evaluates {_clip(self.t(parent or n))!r} as arithmetic "
                                     f"(only numbers are judged)")
                    return
            elif op in _NAME_TESTS:
                parent = n.parent
                operands = [c for c in parent.children if c.id != n.id] if parent is not None else []
                if parent is None or parent.type != "unary_expression" or len(operands) != 1 or \
                        not _NAME.fullmatch(self.word(operands[0]).value or "-"):
                    self.unjudgeable(f"a test of the variable {_clip(self.t(parent or n))!r} "
                                     f"(a subscript is evaluated: only plain names are judged)")
                    return

    def declaration(self, node):
        kw = node.children[0].type if node.children else ""
        if kw not in ("export", "readonly"):
            self.unjudgeable(f"{_clip(self.t(node))!r}: {_UNJUDGEABLE_BUILTINS.get(kw, kw)}")
            return
        for ch in node.children[1:]:
            if ch.type == "variable_assignment":
                self.assignment(ch, prefix=True)
            elif ch.type == "variable_name":
                continue
            else:
                self.unjudgeable(f"{kw} {self.t(ch)!r}")
