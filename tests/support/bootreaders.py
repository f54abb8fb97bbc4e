"""How the readers of bootkit's boot files take them apart, written from their sources.

- `grub_tokens`: GRUB script's lexer (grub-core/script/yylex.l): words with their
  quoting undone, operators, and whether a word expands a `$variable`;
- `blscfg_script`: the GRUB script that GRUB's blscfg makes of a BLS entry (it pastes
  `linux`, `options` and `initrd` unquoted into a menu entry);
- `grub_cmdline`: the command line GRUB's `linux` command builds from its words;
- `kernel_params`: the kernel's own parser (lib/cmdline.c, next_arg).

The tests use them as oracles: a value must mean the same to every reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from bootkit.formats.bls import BootEntry

_OPERATORS = ("||", "&&", ";;", ";", "|", "&", "<", ">", "{", "}")
_WORD_END = " \t\n;|&<>{}"


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "op" or "newline"
    text: str  # a word with its quoting undone (a $variable kept as written), or the operator
    expands: bool = False  # it holds a $variable that GRUB would expand


def grub_tokens(text: str) -> list[Token]:
    """`text` as GRUB's lexer splits it."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "\n":
            tokens.append(Token("newline", c))
            i += 1
        elif c == "#":  # a comment, where a token would start
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif op := next((o for o in _OPERATORS if text.startswith(o, i)), None):
            tokens.append(Token("op", op))
            i += len(op)
        else:
            token, i = _word(text, i)
            tokens.append(token)
    return tokens


def _word(text: str, i: int) -> tuple[Token, int]:
    out: list[str] = []
    expands = False
    while i < len(text) and text[i] not in _WORD_END:
        c = text[i]
        if c == "'":
            end = text.index("'", i + 1)
            out.append(text[i + 1 : end])
            i = end + 1
        elif c == '"':
            i, quoted, dq_expands = _double_quoted(text, i + 1)
            out.append(quoted)
            expands |= dq_expands
        elif c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif c == "$":
            expands = True
            out.append(c)
            i += 1
        else:
            out.append(c)
            i += 1
    return Token("word", "".join(out), expands), i


def _double_quoted(text: str, i: int) -> tuple[int, str, bool]:
    out: list[str] = []
    expands = False
    while text[i] != '"':
        if text[i] == "\\" and text[i + 1] in '$\\"':
            out.append(text[i + 1])
            i += 2
            continue
        expands |= text[i] == "$"
        out.append(text[i])
        i += 1
    return i + 1, "".join(out), expands


def grub_command(line: str) -> list[str]:
    """The words of one GRUB command line; fails if GRUB would read more than one plain
    command there (an operator, a second line, a comment eating words) or expand a word."""
    tokens = grub_tokens(line)
    assert all(t.kind == "word" for t in tokens), f"GRUB reads operators in {line!r}: {tokens}"
    assert not any(t.expands for t in tokens), f"GRUB expands a variable in {line!r}"
    return [t.text for t in tokens]


def blscfg_script(entry: BootEntry, device: str = "(hd0,gpt1)") -> str:
    """The menu entry body GRUB's blscfg makes of `entry`, as GRUB 2.14's blsuki does."""
    linux = f"linux {device}{entry.linux}" + (f" {entry.options}" if entry.options else "")
    initrd = "initrd" + "".join(f" {device}{i}" for i in entry.initrd)
    return f"{linux}\n{initrd}\n" if entry.initrd else f"{linux}\n"


def grub_cmdline(words: list[str]) -> str:
    """The kernel command line GRUB's `linux` builds from its argument words."""
    return " ".join(f'"{w}"' if " " in w else w for w in words)


def kernel_params(cmdline: str) -> list[tuple[str, str | None]]:
    """(parameter, value) pairs as the kernel's next_arg() reads `cmdline`."""
    out: list[tuple[str, str | None]] = []
    s = cmdline.lstrip()
    while s:
        quoted = s.startswith('"')
        if quoted:
            s = s[1:]
        in_quote, equals, i = quoted, 0, 0
        while i < len(s) and (in_quote or not s[i].isspace()):
            if equals == 0 and s[i] == "=":
                equals = i
            if s[i] == '"':
                in_quote = not in_quote
            i += 1
        arg = s[:i]
        # The kernel cuts a closing quote of the whole argument or of its value.
        value_quoted = equals and arg[equals + 1 : equals + 2] == '"'
        if (value_quoted or quoted) and arg.endswith('"'):
            arg = arg[:-1]
        if equals:
            value = arg[equals + 1 :]
            out.append((arg[:equals], value[1:] if value_quoted else value))
        else:
            out.append((arg, None))
        s = s[i:].lstrip()
    return out
